"""The ingress's HTTP pieces in-process: the API key check under a route prefix, the body limit without a
Content-Length, validation errors naming the field at fault, and big or thin images before the processor."""

import io

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from llava_platform.serve import openai_schema as oa
from llava_platform.serve.auth import RequireApiKey
from llava_platform.serve.errors import BodyLimit, install_error_handlers
from llava_platform.serve.image_inputs import ImageLimits, decode_image


def app_with(wrap, root_path: str = "") -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(body: oa.ChatCompletionRequest):
        return {"messages": len(body.messages)}

    @app.get("/ui/config")
    async def ui():
        return {"ui": True}

    return TestClient(wrap(app), root_path=root_path)


@pytest.mark.parametrize("prefix", ["", "/llava"])
def test_the_key_check_sees_paths_within_a_route_prefix(prefix):
    # Serve keeps the prefix in `path` and names it in `root_path`, as this client does
    client = app_with(lambda app: RequireApiKey(app, "k", own_auth_prefixes=("/ui", "/ws")), root_path=prefix)

    def get(path: str, key: str | None = None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return client.get(prefix + path, headers=headers).status_code

    assert get("/health") == 200  # open
    assert get("/ui/config") == 200  # the dashboard checks its own login
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert client.post(prefix + "/v1/chat/completions", json=body).status_code == 401
    assert client.post(prefix + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"}).status_code == 200
    assert get("/uix", None) == 401  # /ui's check covers /ui and below, not every path that starts with it


def test_a_body_without_content_length_is_cut_at_the_limit():
    client = app_with(lambda app: BodyLimit(app, 1000))

    def chunks():
        yield b'{"messages": ['
        for _ in range(100):
            yield b'{"role": "user", "content": "hello"},'

    response = client.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "limits.max_body_bytes" in response.json()["error"]["message"]
    small = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert small.status_code == 200 and small.json() == {"messages": 1}


@pytest.mark.parametrize("body, param, text", [
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text", "required"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": [1]}, "stop[0]", "valid string"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "'system', 'user' or 'assistant'"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "video": "x"}]}]}, "messages[0].content[0]", "tag"),
])  # fmt: skip
def test_validation_errors_name_the_field_in_the_branch_the_value_took(body, param, text):
    response = app_with(lambda app: app).post("/v1/chat/completions", json=body)
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == param and text in error["message"], error


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


def test_a_thin_or_huge_image_is_scaled_down_before_the_processor():
    thin = decode_image(png(4, 6000), ImageLimits(), "image")
    assert max(thin.size) == 4096 and thin.size[0] >= 1
    assert decode_image(png(300, 200), ImageLimits(), "image").size == (300, 200)  # small images untouched
