"""The HTTP floor ``api_bench.py`` measures the API against: FastAPI + uvicorn, run with the
same worker count as ``steps.serve``, that parses the same JSON body and answers a constant
prediction. Nothing but HTTP and JSON. It runs uvicorn's stock httptools protocol, not serve's
one-write one (``steps.serving.wire``): the floor is the stack as it comes (docs/api.md gives both).

    python -m uvicorn --app-dir bench json_floor:app --workers 2 --no-access-log
"""

import json

from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI()
ANSWER = json.dumps({"predictions": [0.0]})


@app.post("/predict")
async def predict(request: Request) -> Response:
    json.loads(await request.body())
    return Response(ANSWER, media_type="application/json")
