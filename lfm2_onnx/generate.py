"""python -m lfm2_onnx.generate FOLDER: generate text from an export.

    python -m lfm2_onnx.generate lfm2-350m-onnx --prompt "Tell me a story" --stream
    python -m lfm2_onnx.generate lfm2-350m-onnx --chat            # interactive, keeps the history
"""

from __future__ import annotations

import sys

from .errors import ArgumentParser, UserError, cli_entry


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m lfm2_onnx.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="export folder written by python -m lfm2_onnx.build")
    p.add_argument("--prompt", help="the prompt (with --chat: the first user message)")
    p.add_argument("--chat", action="store_true", help="use the chat template; interactive unless --prompt is given")
    p.add_argument("--system", help="system prompt for --chat")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--ep", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-length", type=int, help="KV positions per row (prompt + new tokens); default 4096")
    p.add_argument("--preset", help="sampling preset: greedy, lfm2 (LiquidAI's recommended), ...")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--min-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    return p


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


@cli_entry
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if not args.chat and args.prompt is None:
        raise UserError("give --prompt TEXT, or --chat for an interactive conversation")
    from .generation import Lfm2Model

    model = Lfm2Model.load(args.folder, ep=args.ep, max_length=args.max_length)
    if not args.chat:
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
        history.append({"role": "user", "content": pending})
        print("assistant> ", end="", flush=True)
        reply = _say(model, history, args)
        history.append({"role": "assistant", "content": reply})
        if args.prompt is not None and not sys.stdin.isatty():
            return 0  # one-shot --chat --prompt without a terminal
        pending = None


if __name__ == "__main__":
    sys.exit(main())
