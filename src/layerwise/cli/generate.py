"""`layerwise generate RUN_DIR|HF_DIR --prompt TEXT`: sample text with a KV cache, streaming."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from layerwise.cli import positive_int

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from layerwise.nn.model import Transformer


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate text from a run or a Hugging Face model directory",
        description="Sample a continuation of --prompt; greedy with --temperature 0.",
    )
    parser.add_argument("source", metavar="RUN_DIR|HF_DIR")
    parser.add_argument("--prompt", required=True)
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        help="default: 64, or fewer where the model's training context ends sooner after the "
        "prompt; more runs past the training context, with a warning",
    )
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--json", action="store_true", help="print ids and text as JSON")
    parser.set_defaults(func=run_generate)


def load_source(source: str) -> tuple[Transformer, Tokenizer, int]:
    """Model, tokenizer and EOS id of a run directory (config.yaml) or an HF directory."""
    from tokenizers import Tokenizer

    from layerwise.util.errors import UserError

    path = Path(source)
    if (path / "config.yaml").is_file():
        from layerwise.training.load import load_model

        trained = load_model(path)
        tokenizer_file = path / "tokenizer" / "tokenizer.json"
        model, eos_id = trained.model, trained.meta.eos_id
    elif (path / "config.json").is_file():
        from layerwise.hf.importer import hf_tokenizer
        from layerwise.nn.state_dict_adapter import load_hf_model

        model, arch = load_hf_model(path)
        tokenizer_file, eos_id = path / "tokenizer.json", hf_tokenizer(path, arch.eos_id).eos_id
    else:
        raise UserError(f"{source} is neither a run directory (config.yaml) nor an HF model dir")
    if not tokenizer_file.is_file():
        raise UserError(f"{tokenizer_file} not found: generating text needs the tokenizer")
    return model, Tokenizer.from_file(str(tokenizer_file)), eos_id


def run_generate(args: argparse.Namespace) -> int:
    from layerwise.hf.generate import (
        Sampling,
        generate,
        new_tokens_that_fit,
        past_context_warning,
    )

    model, tokenizer, eos_id = load_source(args.source)
    prompt_ids = tokenizer.encode(args.prompt).ids
    max_new_tokens = new_tokens_that_fit(model, len(prompt_ids), args.max_new_tokens)
    warning = past_context_warning(model, len(prompt_ids), max_new_tokens)
    if warning is not None:
        print(f"layerwise: warning: {warning}", file=sys.stderr)
    sampling = Sampling(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        vocab_limit=tokenizer.get_vocab_size(with_added_tokens=True),
    )
    stream = None if args.json else TextStream(tokenizer)
    if stream is not None:
        print(args.prompt, end="", flush=True)
    on_token = None if stream is None else stream.add
    ids = generate(model, [prompt_ids], max_new_tokens, sampling, eos_id, on_token)[0]
    text = tokenizer.decode(ids)
    if args.json:
        print(json.dumps({"prompt_ids": prompt_ids, "ids": ids, "text": text}))
    else:
        print()
    return 0


class TextStream:
    """Prints the text of the ids so far as they come, holding back a partial UTF-8 character."""

    ids: list[int]

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""

    def add(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        sys.stdout.write(text[len(self.shown) :])
        sys.stdout.flush()
        self.shown = text
