"""AdaFuse (Meng et al., ICLR 2021): per-channel keep / reuse / skip between conv1 and conv2 of every block.

Each gated block of a TSN / TSM ResNet gets a policy net (``clipwise.models.adafuse_policy``). For frame t it
decides per conv1 output channel: *keep* uses conv1's output of frame t, *reuse* copies the channel of conv1's
output of frame t−1 (after its BN and ReLU, as computed there, not as fused there), *skip* gives zeros. conv2
then reads the fused map. The blocks are the backbone's own (``clipwise.models.tsn``): each chosen block is
replaced by an ``AdaFuseBlock`` (``clipwise.models.adafuse_block``) that takes over its modules under their names,
so TSN / TSM weights load as they are and only ``*.policy.*`` is new. At inference the blocks execute only what
the policy keeps (``clipwise.models.adafuse_execution``); the configuration and presets are in
``clipwise.models.adafuse_config``.

Training: hard Gumbel-softmax with straight-through gradients at τ = 0.67, executed densely. The loss
CE + λ·GFLOPs (Eq. 6) reads :meth:`AdaFuse.policy_gflops` after a forward: the per-clip GFLOPs of that
forward's policy by Eq. 5, differentiable in the masks.

``structure="prefix"`` (the ``_small`` presets) is the execution-aware variant (``clipwise.models.prefix_gating``): the
policy picks, once per block per clip, a level of an ordered channel list — keep the first k, reuse the next r
on odd frames from the even frame before, skip the rest — so that every convolution runs as a dense slice of
weights laid out when the version loads. Its decisions are recorded as the same per-channel masks, so Eq. 5,
training's masked formulation and the policy report are shared; ``calibrate`` also times each level of every
block, the latency table of ``policy_time_ratio``. The paper presets keep the per-channel policy.

One refinement of Eq. 5: a *reuse* at the first frame copies zeros (no frame before it), so it is executed,
counted and reported as a *skip*. The authors' count charges conv2 for it. Everything else is Eq. 5 as
printed: MACs of conv1 (all frames, channel i at t when kept at t or reused at t+1) + conv2 (input channels
not skipped at t), on top of the layers the policy does not touch and the policy nets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clipwise.models.adafuse_block import AdaFuseBlock, build_adafuse_backbone, directing, fuse_masked
from clipwise.models.adafuse_config import AdaFuseConfig, adafuse_presets
from clipwise.models.adafuse_execution import GatedPairExecutor, executing_gated_pairs, gated_conv_pair, note_executed
from clipwise.models.adafuse_policy import (
    BlockDecisions,
    PolicyRecord,
    active_record,
    first_frame_reuse_is_skip,
    recording,
)
from clipwise.models.base import Capabilities
from clipwise.models.flops import count_flops
from clipwise.models.folding import CHANNEL_BLOCK
from clipwise.models.gating_partitions import DECISIONS, KEEP, REUSE, SKIP, Decisions, in_blocks
from clipwise.models.policy import AdaFusePolicy
from clipwise.models.prefix_gating import order_by_importance
from clipwise.models.registry import register_preset
from clipwise.models.tsn import TSN

# The family's API, wherever its parts are defined
__all__ = [
    "DECISIONS",
    "KEEP",
    "REUSE",
    "SKIP",
    "AdaFuse",
    "AdaFuseBlock",
    "AdaFuseConfig",
    "BlockDecisions",
    "GatedPairExecutor",
    "executing_gated_pairs",
    "fuse_masked",
    "gated_conv_pair",
    "note_executed",
]


class AdaFuse(TSN):
    """AdaFuse on a TSN / TSM ResNet; ``forward`` gives the clip logits as TSN does.

    After every forward, ``last_record`` holds its decisions (per gated block the masks and the MACs they
    gate) and :meth:`policy_gflops` its per-clip GFLOPs by Eq. 5, the training loss term. In eval mode the
    gated blocks execute only what their policy keeps.
    """

    family = "adafuse"
    capabilities = Capabilities(policy="gated_pairs", objective="adafuse")

    def __init__(self, config: AdaFuseConfig, preset: str = "") -> None:
        super().__init__(config, preset, build_adafuse_backbone(config))
        self.last_record: PolicyRecord | None = None
        self._block_costs: dict[tuple[int, int], list[BlockDecisions]] = {}

    def gated_blocks(self) -> list[AdaFuseBlock]:
        """The blocks with a policy net, in execution order."""
        return [module for module in self.backbone.modules() if isinstance(module, AdaFuseBlock)]

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if active_record() is not None:  # a caller collects the decisions
            return super().forward(clips)
        with recording(clips.shape[2], clips.shape[-1]) as record:
            logits = super().forward(clips)
        self.last_record = record
        return logits

    def forward_with_policy(self, clips: torch.Tensor) -> tuple[torch.Tensor, list[AdaFusePolicy]]:
        with recording(clips.shape[2], clips.shape[-1]) as record:
            logits = self(clips)
        return logits, record.policies(self.full_gflops(record.frames, record.size))

    def policy_gflops(self) -> torch.Tensor:
        """GFLOPs per clip of the last forward pass's policy by Eq. 5, differentiable in the policy.

        The layers the policy does not touch and the policy nets count in full; for training, add
        ``λ · policy_gflops().mean()`` to the cross-entropy (Eq. 6).
        """
        record = self.last_record
        if record is None:
            raise RuntimeError("policy_gflops() describes the last forward pass: run one first")
        return record.policy_gflops(self.full_gflops(record.frames, record.size))

    def policy_time_ratio(self) -> torch.Tensor:
        """Per clip, the predicted time of the last forward pass's gated pairs under its decisions over their
        time with every channel, differentiable in the decisions: the latency-aware cost term of training.

        Each pair is predicted as the executor runs a clip alone with the ``union`` partition: conv1 over the
        channels any frame needs, conv2 over those any frame reads, by the block's cost models
        (``clipwise.models.gating``; ``calibrate`` first, else they come from MACs). In training the channel counts are
        expected ones under the policy's probabilities (frames drawn independently): channel c is in the union
        with probability 1 − Π_t (1 − p_t,c), so a channel a policy uses at one frame costs as much as one it
        uses at all, and the term rewards skipping the same channels at every frame — what execution can turn
        into time. At inference it counts the decisions themselves. A prefix policy's blocks are predicted from
        their latency table instead: the time of each level as ``calibrate`` measured it (MACs where never
        timed), weighted by the level choices (straight-through one-hot in training).
        """
        record = self.last_record
        if record is None:
            raise RuntimeError("policy_time_ratio() describes the last forward pass: run one first")
        predicted = full = 0.0
        for block, decisions in zip(self.gated_blocks(), record.blocks, strict=True):
            if decisions.choice_weights is not None:  # "prefix": the latency table of its levels
                costs = block.choice_costs(decisions, record.frames).to(decisions.choice_weights)
                predicted = predicted + decisions.choice_weights @ costs
                full += costs[0]
                continue
            first, second = block._folded(block.conv1, block.bn1), block._folded(block.conv2, block.bn2)
            costs = block.pair_costs(decisions.input_size, first, second)
            chances = decisions.masks if decisions.probabilities is None else decisions.probabilities
            keep, reuse, _ = first_frame_reuse_is_skip(chances).unbind(-1)
            reused_next = F.pad(reuse[:, 1:], (0, 0, 0, 1))
            needed = 1 - (1 - keep) * (1 - reused_next)
            union1 = 1 - (1 - needed).prod(1)  # (N, C)
            union2 = 1 - (1 - keep - reuse).prod(1)
            frames = record.frames
            predicted = predicted + costs.conv1_cost.gathered_time(frames, union1.sum(-1))
            predicted = predicted + costs.conv2_cost.gathered_time(frames, union2.sum(-1))
            full += costs.conv1_cost.predict(frames, None) + costs.conv2_cost.predict(frames, None)
        return predicted / full

    def full_compute(self) -> contextlib.AbstractContextManager:
        return directing(dict.fromkeys(self.gated_blocks(), {"keep_all": True}))

    @torch.inference_mode()
    def calibrate(self, frames: int | None = None, size: int | None = None) -> None:
        """Time every gated pair's candidate computations on this machine at this input size (default: the
        configured one) and keep the fitted cost models, by which the executor then chooses. Runs one forward
        pass of a random clip; call it when a version loads, never on the request path."""
        frames, size = frames or self.config.frames, size or self.config.size
        clip = torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(0))
        inputs: dict[nn.Module, torch.Tensor] = {}

        def keep_input(block: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            inputs.setdefault(block, args[0])

        hooks = [block.register_forward_pre_hook(keep_input) for block in self.gated_blocks()]
        training = self.training
        self.eval()  # the executor runs in eval mode (training calibrates for the latency-aware cost)
        try:
            with self.full_compute():
                self(clip.to(self.fc.weight.device))
        finally:
            for hook in hooks:
                hook.remove()
            self.train(training)
        for block in self.gated_blocks():
            block.calibrate(inputs[block], frames)

    def masked_execution(self) -> contextlib.AbstractContextManager:
        """Run the dense masked formulation (training's) at inference too: the reference for gated execution."""
        return directing(dict.fromkeys(self.gated_blocks(), {"masked": True}))

    def follow_policy(self, decisions: Sequence[torch.Tensor]) -> contextlib.AbstractContextManager:
        """Use the given decisions instead of the policy nets': per gated block, a (T, C) or (N, T, C) tensor
        of codes KEEP (0), REUSE (1) or SKIP (2) for conv1's C output channels. The policy nets still run."""
        blocks = self.gated_blocks()
        if len(decisions) != len(blocks):
            raise ValueError(f"{len(blocks)} gated blocks, {len(decisions)} decision tensors")
        for block, codes in zip(blocks, decisions, strict=True):
            if codes.shape[-1] != block.conv1.out_channels or codes.dtype != torch.long:
                raise ValueError(
                    f"decisions for a block of width {block.conv1.out_channels} must be int64 "
                    f"(..., {block.conv1.out_channels}), got {codes.dtype} {tuple(codes.shape)}"
                )
        return directing({block: {"codes": codes} for block, codes in zip(blocks, decisions, strict=True)})

    def fixed_decisions(self, fraction: float, *, reuse: bool = True) -> list[torch.Tensor]:
        """Per gated block, (T, C) codes of a fixed policy that saves about ``fraction`` of the full-compute
        MACs at the configured frames and size (for ``follow_policy``; ``force_saving`` follows them).

        In every gated block the same share of channels is skipped at every frame and, with ``reuse``, up to
        that share more is kept at even and reused at odd frames (conv1 then runs them every other frame).
        The channels are a fixed random choice of whole 16-channel blocks per block, the same for every clip:
        the best case, one channel set at every frame, aligned as the executor computes. Finding the share
        takes milliseconds: build them once, outside what is timed.
        """
        if not 0 <= fraction < 1:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        frames, size = self.config.frames, self.config.size
        costs = self.block_costs(frames, size)
        full = self.full_gflops(frames, size) * 1e9

        def saved(share: float) -> float:
            return sum(_pattern_saving(block, frames, share, reuse) for block in costs)

        share = min((step / 1000 for step in range(1001)), key=lambda s: abs(saved(s) / full - fraction))
        return [_saving_pattern(block.masks.shape[2], frames, share, reuse, seed) for seed, block in enumerate(costs)]

    @contextlib.contextmanager
    def force_saving(self, fraction: float, *, reuse: bool = True) -> Iterator[float]:
        """Follow ``fixed_decisions(fraction, reuse=reuse)`` (a prefix policy: ``fixed_choices(fraction)``); yields
        the fraction they save by Eq. 5."""
        if self.config.structure == "prefix":
            choices = self.fixed_choices(fraction)
            with self.follow_choices(choices):
                yield self.choices_saving(choices)
            return
        decisions = self.fixed_decisions(fraction, reuse=reuse)
        costs = self.block_costs(self.config.frames, self.config.size)
        full = self.full_gflops(self.config.frames, self.config.size) * 1e9
        achieved = sum(
            BlockDecisions(_one_hot(codes[None]), block.conv1_macs, block.conv2_macs).saved_macs().item()
            for codes, block in zip(decisions, costs, strict=True)
        )
        with self.follow_policy(decisions):
            yield achieved / full

    def follow_choices(self, choices: Sequence[torch.Tensor]) -> contextlib.AbstractContextManager:
        """A prefix policy: use the given levels instead of the policy nets' (the nets still run): per gated block,
        a () or (N,) int64 tensor of indices into its ``policy.choices``."""
        blocks = self.gated_blocks()
        if self.config.structure != "prefix":
            raise ValueError("follow_choices needs structure='prefix'; per-channel policies take follow_policy")
        if len(choices) != len(blocks):
            raise ValueError(f"{len(blocks)} gated blocks, {len(choices)} choice tensors")
        for block, chosen in zip(blocks, choices, strict=True):
            levels = len(block.policy.choices)
            if chosen.dtype != torch.long or chosen.dim() > 1 or bool(((chosen < 0) | (chosen >= levels)).any()):
                raise ValueError(f"choices for a block of {levels} levels must be int64 indices in [0, {levels})")
        return directing({block: {"choices": chosen} for block, chosen in zip(blocks, choices, strict=True)})

    def order_channels_by_importance(self) -> None:
        """A prefix policy: permute every gated block's conv1 output channels most important first
        (``clipwise.models.prefix_gating.order_by_importance``), the network's function unchanged: what makes a trained
        TSN / TSM, or a per-channel AdaFuse's backbone, a good start for levels that keep prefixes."""
        if self.config.structure != "prefix":
            raise ValueError("ordering channels serves structure='prefix'")
        for block in self.gated_blocks():
            order_by_importance(block.conv1, block.bn1, block.conv2)

    def level_savings(self, frames: int | None = None, size: int | None = None) -> list[torch.Tensor]:
        """A prefix policy: per gated block, the MACs per clip each of its levels saves by Eq. 5, (L,)."""
        frames, size = frames or self.config.frames, size or self.config.size
        costs = self.block_costs(frames, size)
        return [block.level_saved_macs(cost, frames) for block, cost in zip(self.gated_blocks(), costs, strict=True)]

    def choices_saving(self, choices: Sequence[torch.Tensor]) -> float:
        """The mean fraction of the full-compute MACs that these levels save at the configured input."""
        saved = sum(level[chosen].double().mean() for level, chosen in zip(self.level_savings(), choices, strict=True))
        return float(saved) / (self.full_gflops() * 1e9)

    def fixed_choices(self, fraction: float) -> list[torch.Tensor]:
        """A prefix policy: per gated block one level, the same for every clip, together saving about
        ``fraction`` of the full-compute MACs: in every block the level nearest to one common share of that
        block's gated MACs saved (the share searched on a grid)."""
        if not 0 <= fraction < 1:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        savings = self.level_savings()
        gated = [level.max() + (level.max() == 0) for level in savings]  # every block has a saving level
        full = self.full_gflops() * 1e9

        def nearest(share: float) -> list[torch.Tensor]:
            return [(level / top - share).abs().argmin() for level, top in zip(savings, gated, strict=True)]

        def saved(share: float) -> float:
            return sum(float(level[index]) for level, index in zip(savings, nearest(share), strict=True)) / full

        share = min((step / 100 for step in range(101)), key=lambda s: abs(saved(s) - fraction))
        return nearest(share)

    def random_choices(
        self, saving: float, *, clips: int = 1, spread: float = 0.25, seed: int = 0
    ) -> list[torch.Tensor]:
        """A prefix policy: levels drawn per (clip, block) that save about ``saving`` of the full-compute MACs on
        average: in each block the level nearest to a share of its gated MACs drawn uniformly in ``centre ±
        spread``, the centre found by bisection. Per gated block, (N,) indices for ``follow_choices``: the random
        case benchmarks measure beside learned policies."""
        savings = self.level_savings()
        shares = [level / level.max().clamp(min=1) for level in savings]
        generator = torch.Generator().manual_seed(seed)
        uniforms = [2 * torch.rand(clips, 1, generator=generator, dtype=torch.float64) - 1 for _ in shares]

        def draw(centre: float) -> list[torch.Tensor]:
            return [
                (share[None] - (centre + spread * uniform)).abs().argmin(-1)
                for share, uniform in zip(shares, uniforms, strict=True)
            ]

        low, high = 0.0, 1.0
        for _ in range(20):
            middle = (low + high) / 2
            low, high = (middle, high) if self.choices_saving(draw(middle)) < saving else (low, middle)
        return draw((low + high) / 2)

    def random_decisions(
        self, saving: float, *, clips: int = 1, reuse_share: float = 0.25, seed: int = 0
    ) -> list[torch.Tensor]:
        """Decisions drawn independently per (clip, frame, channel) whose Eq. 5 saving of the full-compute MACs
        at the configured input is about ``saving``: each channel skipped with one probability (found by
        bisection), else reused with ``reuse_share`` and kept otherwise. Per gated block, (N, T, C) codes, for
        ``follow_policy``: the case benchmarks measure beside learned policies."""
        frames, size = self.config.frames, self.config.size
        costs = self.block_costs(frames, size)
        full = self.full_gflops(frames, size)
        uniforms = [
            torch.rand(clips, frames, block.masks.shape[2], generator=torch.Generator().manual_seed(seed + index))
            for index, block in enumerate(costs)
        ]

        def draw(skip: float) -> list[torch.Tensor]:
            decisions = []
            for uniform in uniforms:
                codes = torch.full(uniform.shape, KEEP, dtype=torch.long)
                codes[uniform < skip + (1 - skip) * reuse_share] = REUSE
                codes[uniform < skip] = SKIP
                codes[:, 0][codes[:, 0] == REUSE] = SKIP  # nothing to reuse before a clip's first frame
                decisions.append(codes)
            return decisions

        def saved(skip: float) -> float:
            blocks = [
                BlockDecisions(_one_hot(codes), cost.conv1_macs, cost.conv2_macs)
                for codes, cost in zip(draw(skip), costs, strict=True)
            ]
            return 1 - PolicyRecord(frames, size, blocks).policy_gflops(full).mean().item() / full

        low, high = 0.0, 1.0
        for _ in range(30):
            middle = (low + high) / 2
            low, high = (middle, high) if saved(middle) < saving else (low, middle)
        return draw((low + high) / 2)

    def execution_of(
        self, codes: Sequence[torch.Tensor], frames: int, size: int, union_below: Sequence[tuple[float, float]]
    ) -> tuple[list[float], list[AdaFusePolicy]]:
        """Executed GFLOPs per clip and the policies (with their Eq. 5 GFLOPs) of the decisions an exported graph
        ran: per gated block its (N, T, C) keep / reuse / skip codes and the (conv1, conv2) union thresholds of
        its node. A convolution ran the union of the channels its frames need when that union held fewer than
        its threshold of the channels, and every channel otherwise (``clipwise.export.ops.GatedConvPair``)."""
        costs = self.block_costs(frames, size)
        blocks, saved = [], 0.0
        for block_codes, cost, (below1, below2) in zip(codes, costs, union_below, strict=True):
            decisions = Decisions.of(block_codes.long())
            names = []
            for any_frame, macs, below in (
                (in_blocks(decisions.needed.any(0)), cost.conv1_macs, below1),  # conv1: in whole blocks
                (decisions.active.any(0), cost.conv2_macs, below2),
            ):
                channels, union = len(any_frame), int(any_frame.sum())
                ran_union = union < below * channels
                saved += frames * (channels - union) * macs / channels if ran_union else 0.0
                names.append("union" if ran_union else "dense")
            masks = _one_hot(block_codes.long())
            blocks.append(BlockDecisions(masks, cost.conv1_macs, cost.conv2_macs, cost.input_size, tuple(names)))
        record = PolicyRecord(frames, size, blocks)
        full = self.full_gflops(frames, size)
        return [full - saved / 1e9] * len(codes[0]), record.policies(full)

    def block_costs(self, frames: int, size: int) -> list[BlockDecisions]:
        """Every gated block's per-frame conv costs and input size (with keep-everything masks), from a meta
        pass, counted once per input size."""
        key = (frames, size)
        if key not in self._block_costs:
            with recording(frames, size) as record:
                count_flops(self, frames, size)
            self._block_costs[key] = record.blocks
        return self._block_costs[key]


def _one_hot(codes: torch.Tensor) -> torch.Tensor:
    return F.one_hot(codes, DECISIONS).double()


def _pattern_counts(channels: int, share: float, reuse: bool) -> tuple[int, int]:
    """Channels skipped, and channels alternating keep / reuse, of a forced-saving pattern."""
    skipped = round(share * channels)
    alternating = min(round(min(share, 1 - share) * channels), channels - skipped) if reuse else 0
    return skipped, alternating


def _pattern_saving(block: BlockDecisions, frames: int, share: float, reuse: bool) -> float:
    """MACs per clip that the forced-saving pattern saves in one block (Eq. 5, counted directly)."""
    channels = block.masks.shape[2]
    skipped, alternating = _pattern_counts(channels, share, reuse)
    per_channel_conv1, per_channel_conv2 = block.conv1_macs / channels, block.conv2_macs / channels
    return frames * skipped * (per_channel_conv1 + per_channel_conv2) + frames // 2 * alternating * per_channel_conv1


def _saving_pattern(channels: int, frames: int, share: float, reuse: bool, seed: int) -> torch.Tensor:
    """(T, C) codes: a share of the channels skipped, up to as many kept at even and reused at odd frames. The
    channels are taken whole ``CHANNEL_BLOCK`` blocks at a time (in a random order of blocks) where the width is
    made of them: the best case for the executor, which computes output channels in whole blocks."""
    skipped, alternating = _pattern_counts(channels, share, reuse)
    generator = torch.Generator().manual_seed(seed)
    if channels % CHANNEL_BLOCK:
        chosen = torch.randperm(channels, generator=generator)
    else:
        blocks = torch.randperm(channels // CHANNEL_BLOCK, generator=generator)
        chosen = (blocks[:, None] * CHANNEL_BLOCK + torch.arange(CHANNEL_BLOCK)).flatten()
    codes = torch.full((frames, channels), KEEP, dtype=torch.long)
    codes[:, chosen[:skipped]] = SKIP
    codes[1::2, chosen[skipped : skipped + alternating]] = REUSE
    return codes


def _register_presets() -> None:
    """Register every AdaFuse preset (``adafuse_presets``) as this family."""
    for name, config in adafuse_presets().items():
        register_preset(name, AdaFuse, config)


_register_presets()
