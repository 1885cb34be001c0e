"""A bare FastAPI app with one empty endpoint: the machine's ceiling for bench/api.py."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
