"""python -m lfm2_onnx.generate FOLDER|ORG/NAME: generate text from an export or a published one.

    python -m lfm2_onnx.generate lfm2-350m-onnx --prompt "Tell me a story" --stream
    python -m lfm2_onnx.generate lfm2-350m-onnx --chat            # interactive, keeps the history
    python -m lfm2_onnx.generate lfm2-350m-onnx --chat --tools tools.json   # the model may call tools;
                                                                   # you type each tool's result
    python -m lfm2_onnx.generate lfm2-vl-450m-onnx --image photo.jpg [--image b.png] "What is in it?"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import ArgumentParser, UserError, cli_entry
from .hub import add_export_arguments
from .sampling import PRESETS, check_field


def _positive_int(text: str) -> int:
    value = int(text)  # argparse turns a ValueError into "invalid _positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


_positive_int.__name__ = "integer"  # argparse names the type in "invalid integer value: 'x'"


def _sampling_flag(field: str, kind: type):
    """An argparse type holding a flag to the SamplingParams field's own rule; the error names the flag."""
    flag = "--" + field.replace("_", "-")

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise UserError(f"{flag} takes {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        check_field(field, value, shown=flag)  # a UserError passes through argparse as it is
        return value

    return convert


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m lfm2_onnx.generate", description=__doc__.split("\n\n")[0])
    add_export_arguments(p, "run")
    p.add_argument("text", nargs="?", metavar="PROMPT", help="the prompt, as --prompt")
    p.add_argument("--prompt", help="the prompt (with --chat: the first user message)")
    p.add_argument("--image", action="append", type=Path, metavar="FILE",
                   help="an image for an LFM2-VL export (repeatable): the images, then the prompt, make the first "
                        "user message of a chat (the chat template is used with or without --chat)")
    p.add_argument("--chat", action="store_true", help="use the chat template; interactive unless --prompt is given")
    p.add_argument("--system", help="system prompt for --chat")
    p.add_argument("--tools", type=Path, help="JSON file with a list of tools (OpenAI function format), for --chat")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--ep", default="cpu", choices=["cpu", "cuda"],
                   help="execution provider: cpu (onnxruntime) or cuda (needs onnxruntime-gpu); default cpu")
    p.add_argument("--max-new-tokens", type=_positive_int, default=256,
                   help="most tokens to generate per reply (default 256; stops earlier at EOS or --stop)")
    p.add_argument("--max-length", type=_positive_int,
                   help="KV positions per row (prompt + new tokens), at most the model's context; default 4096")
    s = p.add_argument_group("sampling (default: the folder's generation_config.json; greedy without one)")
    s.add_argument("--preset", choices=list(PRESETS),
                   help="greedy, lfm2 (LiquidAI's recommended for LFM2), lfm2.5 (for LFM2.5) or creative; "
                        "the flags below override its fields")
    s.add_argument("--temperature", type=_sampling_flag("temperature", float),
                   help="softmax temperature, >= 0; 0 is greedy")
    s.add_argument("--top-k", type=_sampling_flag("top_k", int), help="keep the k most likely tokens; 0 turns it off")
    s.add_argument("--top-p", type=_sampling_flag("top_p", float),
                   help="keep the smallest set of tokens whose probability reaches p, in (0, 1]; 1 turns it off")
    s.add_argument("--min-p", type=_sampling_flag("min_p", float),
                   help="drop tokens less likely than min-p x the most likely one, in [0, 1); 0 turns it off")
    s.add_argument("--repetition-penalty", type=_sampling_flag("repetition_penalty", float),
                   help="divide the scores of tokens already seen (transformers' rule), > 0; 1 turns it off")
    s.add_argument("--seed", type=_sampling_flag("seed", int), help="random seed for sampling (reproducible runs)")
    s.add_argument("--stop", action="append", help="stop string (repeatable)")
    return p


def _check_room(model, ids: list[int], args) -> None:
    """The prompt plus --max-new-tokens must fit the KV positions the model was loaded with."""
    if len(ids) + args.max_new_tokens > model.capacity:
        context = model.layout.context_length
        limit = f"--max-length {args.max_length}" if args.max_length else f"the default --max-length {model.capacity}"
        raise UserError(f"the prompt ({len(ids)} tokens) + --max-new-tokens {args.max_new_tokens} exceeds {limit}; "
                        f"lower --max-new-tokens or raise --max-length (the model allows {context})")


def _sampling(args) -> dict:
    return dict(preset=args.preset, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed, stop=args.stop,
                max_new_tokens=args.max_new_tokens)


def _say(model, prompt, args) -> str:
    if args.stream:
        parts = []
        for delta in model.generate(prompt, stream=True, **_sampling(args)):
            print(delta, end="", flush=True)
            parts.append(delta)
        print()
        return "".join(parts)
    text = model.generate(prompt, **_sampling(args))
    print(text)
    return text


def _read_tools(path: Path | None) -> list[dict] | None:
    if path is None:
        return None
    try:
        tools = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; --tools takes a JSON file with a list of tools") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise UserError(f"{path}: expected a JSON list of tool objects ({{\"type\": \"function\", \"function\": ...}})")
    return tools


def _read_images(paths: list[Path] | None) -> list:
    """Each --image file decoded now, so that a missing or unreadable one fails before the model loads."""
    from .vision import load_image

    images = []
    for path in paths or []:
        if not path.is_file():
            raise UserError(f"--image {path}: no such file; pass an image file (PNG, JPEG, WebP, GIF or BMP)")
        images.append(load_image(path))
    return images


def _prompt_ids(model, history: list[dict], tools) -> list[int]:
    """The conversation's token ids, each image's tokens expanded (a conversation with images)."""
    from .vision.chat import has_image_parts

    if has_image_parts(history):
        return model.chat_inputs(history, tools)[0].input_ids
    return model.chat_prompt(history, tools)[0]


def _image_message(images: list, text: str) -> dict:
    """The first user turn: the images in order, then the text (as LFM2-VL's examples put them)."""
    return {"role": "user", "content": [*({"type": "image", "image": image} for image in images),
                                        {"type": "text", "text": text}]}


def _chat_turn(model, history: list[dict], tools, args) -> dict:
    """One assistant reply, shown as it comes (with --stream) or at the end."""
    from .chat import ContentDelta, ReasoningDelta

    options = {k: v for k, v in _sampling(args).items()}
    if not args.stream:
        reply = model.chat(history, tools=tools, **options)
        if reply.get("reasoning_content"):
            print(f"[thinking] {reply['reasoning_content']}")
        print(reply.get("content") or "")
        return reply
    stream = model.chat(history, tools=tools, stream=True, **options)
    thinking = False
    for event in stream:
        if isinstance(event, ReasoningDelta):
            print(("" if thinking else "[thinking] ") + event.text, end="", flush=True)
            thinking = True
        elif isinstance(event, ContentDelta):
            print(("\n" if thinking else "") + event.text, end="", flush=True)
            thinking = False
    print()
    return stream.message


def _run_tool_calls(reply: dict, history: list[dict]) -> bool:
    """Show the calls, read each result from the user; False when there were none."""
    calls = reply.get("tool_calls") or []
    for call in calls:
        fn = call["function"]
        print(f"[tool call] {fn['name']}({fn['arguments']})")
        try:
            result = input(f"result of {fn['name']}> ")
        except EOFError:
            result = ""
        history.append({"role": "tool", "tool_call_id": call["id"], "name": fn["name"], "content": result})
    return bool(calls)


@cli_entry
def main(argv=None) -> int:
    args = parser().parse_intermixed_args(argv)  # the prompt may follow --image FILE
    if args.text is not None:
        if args.prompt is not None:
            raise UserError("give the prompt once: as the argument after the folder or as --prompt")
        args.prompt = args.text
    if not args.chat and args.prompt is None:
        raise UserError("give --prompt TEXT, or --chat for an interactive conversation")
    if args.tools and not args.chat:
        raise UserError("--tools needs --chat")
    tools = _read_tools(args.tools)
    images = _read_images(args.image)
    from .lfm2_model import Lfm2Model, check_max_length
    from .hub import resolve_export
    from .session import check_ep_flag

    # The flags are checked here, so that errors name them (the API's name its arguments).
    layout = resolve_export(args.folder, args.ep, args.precision, revision=args.revision)  # a repo id: pulled once
    if args.max_length is not None:
        check_max_length(args.max_length, layout.context_length, shown="--max-length")
    check_ep_flag(args.ep)
    if images and layout.vision is None:
        raise UserError(f"{layout.folder.name} is a text-only export, so --image has nothing to read it; run an "
                        "LFM2-VL export (python -m lfm2_onnx.build -m LiquidAI/LFM2-VL-450M ...) or drop --image")
    model = Lfm2Model.load(layout.folder, ep=args.ep, precision=args.precision, max_length=args.max_length)
    if not args.chat and not images:
        _check_room(model, model.encode(args.prompt), args)
        _say(model, args.prompt, args)
        return 0
    history = [{"role": "system", "content": args.system}] if args.system else []
    pending = args.prompt
    while True:
        if pending is None:
            try:
                pending = input("you> ")
            except EOFError:
                return 0
            if pending.strip() in ("/exit", "/quit"):
                return 0
        # the images go with the first user message; later ones are text
        history.append(_image_message(images, pending) if images else {"role": "user", "content": pending})
        images = []
        while True:  # the model may call tools several times before it answers
            _check_room(model, _prompt_ids(model, history, tools), args)
            if args.chat:
                print("assistant> ", end="", flush=True)
            reply = _chat_turn(model, history, tools, args)
            history.append(reply)
            if not _run_tool_calls(reply, history):
                break
        if not args.chat or (args.prompt is not None and not sys.stdin.isatty()):
            return 0  # --image without --chat: one reply; one-shot --chat --prompt without a terminal
        pending = None


if __name__ == "__main__":
    sys.exit(main())
