"""The API router: every area's routes in one place."""

from fastapi import APIRouter

from clipwise.service.api.routes import demo, health, management, metrics, models, predict, v2

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(metrics.router)
api_router.include_router(models.router)
api_router.include_router(predict.router)
api_router.include_router(management.router)
api_router.include_router(v2.router)
api_router.include_router(demo.router)
