"""python -m lfm2_onnx.serve with the tiny LFM2-VL export: images as OpenAI image_url parts (data: URLs).

A real uvicorn process and the official openai client, as tests/test_serve.py; every reply is compared
with what Lfm2Model.chat gives for the same messages in this process.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("transformers")

from test_serve import ServeProcess  # noqa: E402

from lfm2_onnx.lfm2_model import Lfm2Model  # noqa: E402

MAX_LENGTH = 1024  # the tiny processor gives a small image 64 image tokens, a 4-tile one 1280


@pytest.fixture(scope="module")
def vl_folder(tmp_path_factory):
    from lfm2_onnx.builder.export import export
    from lfm2_onnx.builder.options import BuildOptions
    from lfm2_onnx.builder.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("serve-vl")
    checkpoint = write_tiny_checkpoint(root / "ckpt", vl=True, seed=3)
    return export(checkpoint, root / "lfm2-vl-tiny", BuildOptions("fp32", "cpu"), progress=False).folder


@pytest.fixture(scope="module")
def server(vl_folder):
    with ServeProcess(vl_folder, "--max-batch", 4, "--max-length", MAX_LENGTH) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def local(vl_folder):
    return Lfm2Model.load(vl_folder, max_length=MAX_LENGTH)


def picture(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def data_url(pixels: np.ndarray, fmt: str = "PNG") -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def image_messages(*urls: str, text: str = "What is in this picture?") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def expected_reply(local, messages: list[dict], max_tokens: int) -> str:
    """Lfm2Model.chat on the same messages, its images given as the decoded pixels."""
    return local.chat(messages, max_new_tokens=max_tokens, temperature=0)["content"]


def test_chat_with_an_image_equals_the_runtime_streamed_or_not(client, local, vl_folder):
    messages = image_messages(data_url(picture(48, 64, 0)))
    expected = expected_reply(local, messages, 16)
    assert expected  # random weights still write something in 16 tokens
    reply = client.chat.completions.create(model=vl_folder.name, messages=messages, max_tokens=16, temperature=0)
    assert reply.choices[0].message.content == expected
    assert reply.usage.prompt_tokens == len(local.chat_inputs(messages)[0].input_ids)
    assert reply.usage.prompt_tokens > 64  # the image's tokens are in the prompt
    chunks = list(client.chat.completions.create(model=vl_folder.name, messages=messages, max_tokens=16,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage.model_dump() == reply.usage.model_dump()


def test_the_image_changes_the_reply(client, vl_folder):
    """Two different pictures, same text: the image features reach the decoder."""
    replies = [client.chat.completions.create(model=vl_folder.name, max_tokens=12, temperature=0,
                                              messages=image_messages(data_url(picture(64, 64, seed))))
               .choices[0].message.content for seed in (1, 2)]
    text_only = client.chat.completions.create(model=vl_folder.name, max_tokens=12, temperature=0,
                                               messages=[{"role": "user", "content": "What is in this picture?"}])
    assert len({*replies, text_only.choices[0].message.content}) == 3


def test_two_images_and_a_jpeg_in_one_conversation(client, local, vl_folder):
    messages = [{"role": "system", "content": "Be brief."},
                *image_messages(data_url(picture(40, 90, 3)), text="First one."),
                {"role": "assistant", "content": "A picture."},
                *image_messages(data_url(picture(70, 50, 4), "JPEG"), text="And this?")]
    expected = expected_reply(local, messages, 10)
    reply = client.chat.completions.create(model=vl_folder.name, messages=messages, max_tokens=10, temperature=0)
    assert reply.choices[0].message.content == expected


def test_concurrent_image_requests_equal_single_runs(server, vl_folder):
    """Requests with different images decoded together (4 slots) give what each gets alone."""
    import asyncio

    bodies = [image_messages(data_url(picture(32 + 16 * i, 48, 10 + i))) for i in range(4)]
    client = server.client()
    alone = [client.chat.completions.create(model=vl_folder.name, messages=m, max_tokens=10, temperature=0)
             .choices[0].message.content for m in bodies]

    async def all_at_once():
        async with openai.AsyncOpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0,
                                      timeout=120) as aclient:
            replies = await asyncio.gather(*(aclient.chat.completions.create(
                model=vl_folder.name, messages=m, max_tokens=10, temperature=0) for m in bodies))
        return [r.choices[0].message.content for r in replies]

    assert asyncio.run(all_at_once()) == alone


def _post(server, body: dict, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(f"{server.base}{path}", json=body, timeout=60)


@pytest.mark.parametrize("url,says", [
    ("https://example.com/cat.png", "must come as data: URLs"),
    ("data:image/png;base64,bm90IGFuIGltYWdl", "not a readable image"),
    ("data:image/png;base64,@@@", "not valid base64"),
    ("data:image/png,rawbytes", "base64"),
], ids=["web URL", "not an image", "not base64", "not base64-encoded"])
def test_bad_images_are_400_and_the_server_keeps_serving(server, client, vl_folder, url, says):
    response = _post(server, {"messages": image_messages(url), "max_tokens": 4})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert says in error["message"] and "\n" not in error["message"]
    assert error["param"] == "messages.0.content.0"
    good = client.chat.completions.create(model=vl_folder.name, max_tokens=4, temperature=0,
                                          messages=image_messages(data_url(picture(32, 32, 0))))
    assert good.choices[0].finish_reason in ("length", "stop")


def test_too_many_image_tokens_for_the_context_is_a_400(server, client, vl_folder):
    """A 1024 x 1024 picture is 4 tiles + a thumbnail, 1280 image tokens: more than the 1024 positions."""
    response = _post(server, {"messages": image_messages(data_url(picture(1024, 1024, 5))), "max_tokens": 4})
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "1280 of them for 1 image(s)" in message and "fewer or smaller images" in message, message
    # a small image, but max_tokens leaves it no room
    small = image_messages(data_url(picture(32, 32, 0)))
    response = _post(server, {"messages": small, "max_tokens": MAX_LENGTH - 20})
    assert response.status_code == 400, response.text
    assert "64 of them for 1 image(s), but at most 20 fit" in response.json()["error"]["message"]
    assert client.chat.completions.create(model=vl_folder.name, messages=small, max_tokens=4).choices


def test_text_completions_stay_text_only(server, client, local, vl_folder):
    expected = local.generate("The capital of France is", max_new_tokens=10, temperature=0)
    reply = client.completions.create(model=vl_folder.name, prompt="The capital of France is", max_tokens=10,
                                      temperature=0)
    assert reply.choices[0].text == expected
    # the image token is an ordinary id there: no features to put at it
    image_id = local.codec.token_id("<image>")
    response = _post(server, {"prompt": [1, image_id, 5], "max_tokens": 2}, "/v1/completions")
    assert response.status_code == 400 and "<image>" in response.json()["error"]["message"], response.text
    response = _post(server, {"prompt": "A picture: <image>", "max_tokens": 2}, "/v1/completions")
    assert response.status_code == 400 and "but no images" in response.json()["error"]["message"], response.text


def test_an_image_marker_typed_as_text_is_a_400(server, client, vl_folder):
    """<image> in a text part is the image token; without an image part there are no features for it."""
    response = _post(server, {"messages": [{"role": "user", "content": "What is <image>?"}], "max_tokens": 2})
    assert response.status_code == 400 and "but no images" in response.json()["error"]["message"], response.text
    with_image = image_messages(data_url(picture(32, 32, 0)), text="and <image>?")
    response = _post(server, {"messages": with_image, "max_tokens": 2})
    assert response.status_code == 400 and "2 <image> marker(s) but 1 image(s)" in response.json()["error"]["message"]
    assert client.chat.completions.create(model=vl_folder.name, messages=image_messages(data_url(picture(32, 32, 0))),
                                          max_tokens=2).choices
