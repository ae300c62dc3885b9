// Clipwise demo page: lists the served models, uploads a clip to the predict route and shows the answer.
// No framework and no build step; the charts are inline SVG drawn here. Every request goes to this origin.

const SVG_NS = "http://www.w3.org/2000/svg";
const TOP_K = 5;
const STAGES = ["read", "queue", "decode", "preprocess", "inference", "total"];

// One colour per category, used by the SVG charts and their legends alike.
const CATEGORIES = {
  keep: { color: "#1d4ed8", meaning: "computed at this frame" },
  reuse: { color: "#d97706", meaning: "copied from the previous frame" },
  skip: { color: "#cbd5e1", meaning: "set to zero, not computed" },
  kept: { color: "#1d4ed8", meaning: "frame processed" },
  dropped: { color: "#e2e8f0", meaning: "frame left out" },
  "3D": { color: "#7c3aed", meaning: "3D kernels" },
  "2D": { color: "#e2e8f0", meaning: "centre temporal slice only" },
  S: { color: "#0d9488", meaning: "spatial unit" },
  ST: { color: "#1d4ed8", meaning: "spatio-temporal unit" },
  "S+ST": { color: "#7c3aed", meaning: "both, summed" },
  policy: { color: "#d97706", meaning: "what the policy asked for (paper's count)" },
  executed: { color: "#1d4ed8", meaning: "executed" },
  full: { color: "#cbd5e1", meaning: "full model" },
};

const byId = (id) => document.getElementById(id);
let selectedModel = null; // GET /v1/models/{name} of the model picked last

// ------------------------------------------------------------------ DOM helpers

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function svgElement(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

function definitions(pairs) {
  return pairs.flatMap(([term, value]) => [element("dt", {}, term), element("dd", {}, value)]);
}

const formatGflops = (value) => `${value.toFixed(3)} GFLOPs`;
const percent = (fraction) => `${(fraction * 100).toFixed(1)}%`;
const signedPercent = (fraction) => `${fraction >= 0 ? "+" : ""}${percent(fraction)}`; // a change: + is longer
const milliseconds = (value) => `${value.toFixed(1)} ms`;

// ------------------------------------------------------------------ API

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body?.error;
    throw new Error(error ? `${error.message} (${response.status} ${error.code})` : `HTTP ${response.status}`);
  }
  return body;
}

const modelPath = (name) => `/v1/models/${encodeURIComponent(name)}`;

function setStatus(text, state = "") {
  const status = byId("status");
  status.textContent = text;
  status.dataset.state = state;
}

async function loadModels() {
  const select = byId("model");
  try {
    const { models } = await api("/v1/models");
    const options = models.map((model) => {
      const untrained = model.trained ? "" : ", untrained";
      return element("option", { value: model.name }, `${model.name} (${model.family}${untrained})`);
    });
    select.replaceChildren(...(options.length ? options : [element("option", { value: "" }, "no model is served")]));
    select.disabled = !options.length;
    if (options.length) await describeModel();
  } catch (error) {
    setStatus(`Cannot list the models: ${error.message}`, "error");
  }
}

async function describeModel() {
  const name = byId("model").value;
  const info = byId("model-info");
  let detail;
  try {
    detail = await api(modelPath(name));
  } catch (error) {
    info.textContent = error.message;
    return;
  }
  if (byId("model").value !== name) return; // another model was picked meanwhile
  selectedModel = detail;
  const spec = detail.preprocessing;
  info.textContent =
    `version ${detail.version} · ${spec.frames} frames of ${spec.crop_size}×${spec.crop_size} px ` +
    `(${spec.sampling} sampling) · ${detail.labels.length} classes · ` +
    `${formatGflops(detail.full_gflops)} per view · ${detail.params_m.toFixed(2)} M parameters`;
}

async function classify(event) {
  event.preventDefault();
  const name = byId("model").value;
  const file = byId("video").files[0];
  const clips = byId("clips").value;
  const crops = byId("crops").value;
  byId("submit").disabled = true;
  byId("result").setAttribute("aria-busy", "true");
  setStatus(`Classifying ${file.name} with ${name}…`, "busy");
  try {
    const model = selectedModel?.name === name ? selectedModel : await api(modelPath(name));
    const query = new URLSearchParams({ top_k: Math.min(TOP_K, model.labels.length), clips, crops });
    const body = new FormData();
    body.append("file", file);
    const result = await api(`${modelPath(name)}/predict?${query}`, { method: "POST", body });
    showResult(result, model, clips * crops);
    setStatus(`Done: ${result.predictions[0].label}, ${milliseconds(result.timing_ms.total)} on the server.`, "done");
  } catch (error) {
    setStatus(`The request failed: ${error.message}`, "error");
  } finally {
    byId("submit").disabled = false;
    byId("result").removeAttribute("aria-busy");
  }
}

// ------------------------------------------------------------------ result

function showResult(result, model, views) {
  const video = result.video;
  byId("result-summary").textContent =
    `${result.model} version ${result.version} on ${result.backend} · ${views} view(s) · ` +
    `${video.width}×${video.height} ${video.codec}, ${video.duration_s.toFixed(1)} s, ` +
    `${video.frames_decoded} frames decoded · request ${result.request_id}`;
  showTopClasses(result.predictions);
  showCompute(result.flops, result.timing_ms.inference / views, result.full_compute_ms_per_view, model.counterpart);
  showTiming(result.timing_ms, result.batch_size);
  byId("policy").replaceChildren(...policyFigures(result.policy, model));
  byId("raw").textContent = JSON.stringify(result, null, 2);
  byId("result").hidden = false;
}

function showTopClasses(predictions) {
  const rows = predictions.map((prediction, rank) => {
    const bar = element("span", { class: "bar", "aria-hidden": "true" });
    bar.style.width = percent(prediction.score);
    return element(
      "tr",
      {},
      element("td", {}, String(rank + 1)),
      element("th", { scope: "row" }, prediction.label),
      element("td", { class: "score" }, element("span", { class: "track" }, bar), percent(prediction.score)),
    );
  });
  byId("top-classes").tBodies[0].replaceChildren(...rows);
}

// The FLOPs the policy asked for and those that ran, beside the time: a FLOPs saving is not a time saving
// until the clock says so. The full model's time per view was measured when the version loaded, and so was
// the dense counterpart's (the model a user would deploy instead), when the manifest names one.
function showCompute(flops, inferencePerView, fullPerView, counterpart) {
  const time = fullPerView == null ? [] : [
    ["Time per view", milliseconds(inferencePerView)],
    ["Full-compute time", milliseconds(fullPerView)],
    ["Time vs full compute", signedPercent(inferencePerView / fullPerView - 1)],
  ];
  if (counterpart?.ms_per_view != null) {
    time.push(
      [`Dense ${counterpart.name} (${counterpart.backend})`, milliseconds(counterpart.ms_per_view)],
      ["Time vs the dense model", signedPercent(inferencePerView / counterpart.ms_per_view - 1)],
    );
  }
  byId("compute").replaceChildren(
    ...definitions([
      ["Policy asked for", formatGflops(flops.policy_gflops)],
      ["Executed", formatGflops(flops.executed_gflops)],
      ["Full model", formatGflops(flops.full_gflops)],
      ["Saved", percent(flops.saving)],
      ...time,
    ]),
  );
  const bars = [
    { category: "full", label: "full", value: flops.full_gflops },
    { category: "policy", label: "policy", value: flops.policy_gflops },
    { category: "executed", label: "executed", value: flops.executed_gflops },
  ];
  const description = `Executed ${formatGflops(flops.executed_gflops)} of ${formatGflops(flops.full_gflops)}`;
  byId("compute-chart").replaceChildren(horizontalBars(bars, description));
}

function showTiming(timing, batchSize) {
  const batch = batchSize === 1 ? "ran alone" : `with ${batchSize - 1} other request(s)`;
  const pairs = [...STAGES.map((stage) => [stage, milliseconds(timing[stage])]), ["batch", batch]];
  byId("timing").replaceChildren(...definitions(pairs));
}

// ------------------------------------------------------------------ policy

const POLICY_FIGURES = { adafuse: adafuseFigures, ada3d: ada3dFigures, fusion: fusionFigures };

function policyFigures(policies, model) {
  if (!policies) {
    return [element("p", { class: "hint" }, "Static model: every view runs the full network, so there is no policy.")];
  }
  return POLICY_FIGURES[policies[0].family](policies, model);
}

function adafuseFigures(policies) {
  const usage = ["keep", "reuse", "skip"];
  const overall = meanUsage(policies.map((policy) => [policy.overall]))[0];
  const blocks = meanUsage(policies.map((policy) => policy.blocks));
  const frames = meanUsage(policies.map((policy) => policy.frames));
  // Blocks count from 1; frames are indices into the sampled clip, from 0, as in the API.
  const bars = (list, name, first) => list.map((values, index) => ({ label: String(index + first), name, values }));
  return [
    element(
      "p",
      {},
      `AdaFuse: of the gated channels, ${percent(overall.keep)} were computed, ${percent(overall.reuse)} ` +
        `reused from the previous frame and ${percent(overall.skip)} skipped${overViews(policies)}.`,
    ),
    legend(usage),
    chartRow(
      figure("Channels of each gated block", stackedBars(bars(blocks, "block", 1), usage, "block")),
      figure("Channels at each frame", stackedBars(bars(frames, "frame", 0), usage, "frame index")),
    ),
  ];
}

function ada3dFigures(policies, model) {
  const frames = model.preprocessing.frames;
  const frameRows = viewRows(policies, (policy) =>
    Array.from({ length: frames }, (_, index) => (policy.frames_kept.includes(index) ? "kept" : "dropped")),
  );
  const stageRows = viewRows(policies, (policy) => policy.stages_3d.map((on) => (on ? "3D" : "2D")));
  const keptFrames = mean(policies.map((policy) => policy.frames_kept.length));
  const stagesOn = mean(policies.map((policy) => policy.stages_3d.filter(Boolean).length));
  const stages = policies[0].stages_3d.length;
  return [
    element(
      "p",
      {},
      `Ada3D: ${keptFrames.toFixed(1)} of ${frames} frames kept and ${stagesOn.toFixed(1)} of ${stages} ` +
        `switchable stages in 3D${overViews(policies)}.`,
    ),
    legend(["kept", "dropped", "3D", "2D"]),
    chartRow(
      figure("Frames kept", cellGrid(frameRows, (index) => String(index), "frame index")),
      figure("3D stages on", cellGrid(stageRows, (index) => String(index + 1), "stage")),
    ),
  ];
}

function fusionFigures(policies) {
  const rows = viewRows(policies, (policy) => policy.strategy);
  const strategy = policies[0].strategy;
  const shares = ["S", "ST", "S+ST"].map((unit) => `${strategy.filter((u) => u === unit).length} ${unit}`);
  return [
    element("p", {}, `Fusion strategy: ${shares.join(", ")} over ${strategy.length} template layers.`),
    legend(["S", "ST", "S+ST"]),
    figure("Unit of each template layer", cellGrid(rows, (index) => String(index + 1), "layer")),
  ];
}

const mean = (values) => values.reduce((sum, value) => sum + value, 0) / values.length;

function overViews(policies) {
  return policies.length > 1 ? ` (mean over ${policies.length} views)` : "";
}

// Per position, the mean {keep, reuse, skip} over the views' lists of usages.
function meanUsage(lists) {
  return lists[0].map((_, index) => ({
    keep: mean(lists.map((list) => list[index].keep)),
    reuse: mean(lists.map((list) => list[index].reuse)),
    skip: mean(lists.map((list) => list[index].skip)),
  }));
}

// One row of categorical cells per distinct decision; views that decided alike share a row.
function viewRows(policies, cellsOf) {
  const groups = new Map();
  policies.forEach((policy, index) => {
    const cells = cellsOf(policy);
    const key = JSON.stringify(cells);
    if (!groups.has(key)) groups.set(key, { cells, views: [] });
    groups.get(key).views.push(index + 1);
  });
  return [...groups.values()].map(({ cells, views }) => {
    let label = views.length === 1 ? `view ${views[0]}` : `views ${views.join(", ")}`;
    if (views.length === policies.length && views.length > 1) label = "all views";
    return { label, cells };
  });
}

// ------------------------------------------------------------------ charts (inline SVG)

function figure(title, chart) {
  return element("figure", { class: "chart" }, element("figcaption", {}, title), chart);
}

function chartRow(...figures) {
  return element("div", { class: "chart-row" }, ...figures);
}

function legend(categories) {
  const items = categories.map((category) => {
    const swatch = element("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = CATEGORIES[category].color;
    return element("li", {}, swatch, element("strong", {}, category), ` ${CATEGORIES[category].meaning}`);
  });
  return element("ul", { class: "legend" }, ...items);
}

function chartSvg(width, height, description) {
  return svgElement("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
    "aria-label": description,
  });
}

function rect(x, y, width, height, category, tooltip) {
  const attributes = { x, y, width, height, fill: CATEGORIES[category].color, "data-category": category };
  return svgElement("rect", attributes, svgElement("title", {}, tooltip));
}

function text(x, y, content, attributes = {}) {
  return svgElement("text", { x, y, ...attributes }, content);
}

// Bars with values in [0, 1] stacked bottom-up in the order of `categories`; a 0-100% axis on the left.
function stackedBars(bars, categories, axisName) {
  const plot = { left: 40, top: 8, height: 150, bottom: 36 };
  const step = Math.max(8, Math.min(36, 480 / bars.length));
  const width = plot.left + bars.length * step + 8;
  const description = `stacked ${categories.join(" / ")} per ${axisName}`;
  const svg = chartSvg(width, plot.top + plot.height + plot.bottom, description);
  for (const tick of [0, 0.5, 1]) {
    const y = plot.top + plot.height * (1 - tick);
    svg.append(svgElement("line", { x1: plot.left, x2: width - 4, y1: y, y2: y, class: "grid" }));
    svg.append(text(plot.left - 6, y + 4, `${tick * 100}%`, { "text-anchor": "end", class: "tick" }));
  }
  const labelEvery = Math.ceil(bars.length / 24);
  bars.forEach((bar, index) => {
    const x = plot.left + index * step + 1;
    const group = svgElement("g", { class: "bar", "data-label": bar.label });
    let bottom = plot.top + plot.height;
    for (const category of categories) {
      const height = bar.values[category] * plot.height;
      bottom -= height;
      const tooltip = `${bar.name} ${bar.label}: ${category} ${percent(bar.values[category])}`;
      group.append(rect(x, bottom, step - 2, height, category, tooltip));
    }
    svg.append(group);
    if (index % labelEvery === 0) {
      const labelY = plot.top + plot.height + 14;
      svg.append(text(x + (step - 2) / 2, labelY, bar.label, { "text-anchor": "middle", class: "tick" }));
    }
  });
  const axisX = plot.left + (width - plot.left) / 2;
  svg.append(text(axisX, plot.top + plot.height + 32, axisName, { "text-anchor": "middle", class: "axis" }));
  return svg;
}

// Rows of categorical cells, one column per position, labelled by `columnLabel(index)`.
function cellGrid(rows, columnLabel, columnName) {
  const cell = 20;
  const left = 86;
  const columns = Math.max(...rows.map((row) => row.cells.length));
  const width = left + columns * cell + 4;
  const height = 18 + rows.length * cell + 4;
  const svg = chartSvg(width, height, `${columnName} decisions, ${rows.length} row(s)`);
  for (let index = 0; index < columns; index++) {
    const x = left + index * cell + cell / 2;
    svg.append(text(x, 12, columnLabel(index), { "text-anchor": "middle", class: "tick" }));
  }
  rows.forEach((row, rowIndex) => {
    const y = 18 + rowIndex * cell;
    const group = svgElement("g", { class: "row", "data-label": row.label });
    group.append(text(left - 6, y + cell / 2 + 4, row.label, { "text-anchor": "end", class: "tick" }));
    row.cells.forEach((category, index) => {
      const tooltip = `${row.label}, ${columnName} ${columnLabel(index)}: ${category}`;
      group.append(rect(left + index * cell + 1, y + 1, cell - 2, cell - 2, category, tooltip));
    });
    svg.append(group);
  });
  return svg;
}

// Horizontal bars against a common scale (the largest value fills the width).
function horizontalBars(bars, description) {
  const left = 70;
  const width = 320;
  const row = 24;
  const largest = Math.max(...bars.map((bar) => bar.value)) || 1;
  const svg = chartSvg(width, bars.length * row + 4, description);
  bars.forEach((bar, index) => {
    const y = index * row + 2;
    svg.append(text(left - 6, y + 15, bar.label, { "text-anchor": "end", class: "tick" }));
    const length = ((width - left - 4) * bar.value) / largest;
    svg.append(rect(left, y, length, row - 6, bar.category, `${bar.label}: ${formatGflops(bar.value)}`));
  });
  return svg;
}

// ------------------------------------------------------------------ start

byId("model").addEventListener("change", describeModel);
byId("predict-form").addEventListener("submit", classify);
loadModels();
