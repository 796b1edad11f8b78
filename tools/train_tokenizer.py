"""Train a SentencePiece tokenizer on text or JSONL files.

    python tools/train_tokenizer.py --input 'data/*.jsonl' --model_prefix out/tok --vocab_size 512

Writes out/tok.model and out/tok.vocab; point `config.data.tokenizer` at the .model file
and set `config.model.vocab_size` to at least the printed vocab size.
"""

from __future__ import annotations

import sys

from align_jax import cli
from align_jax.data.sources import DataError, expand_files
from align_jax.data.tokenizer import train_tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="tools/train_tokenizer.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--input", required=True, help="comma-separated files or globs")
    parser.add_argument("--model_prefix", required=True, help="writes PREFIX.model/.vocab")
    parser.add_argument("--vocab_size", type=int, required=True)
    parser.add_argument("--model_type", default="bpe", choices=["bpe", "unigram"])
    parser.add_argument("--format", default="auto", choices=["auto", "jsonl", "text"])
    parser.add_argument("--text_field", default="text")
    parser.add_argument("--character_coverage", type=float, default=0.9995)
    parser.add_argument("--input_sentence_size", type=int, default=2_000_000)
    try:
        args = parser.parse_args(argv)
    except cli.UsageError as e:
        return cli.report(e)
    try:
        files = expand_files(args.input, "--input")
        tok = train_tokenizer(
            files,
            args.model_prefix,
            args.vocab_size,
            model_type=args.model_type,
            format=args.format,
            text_field=args.text_field,
            character_coverage=args.character_coverage,
            input_sentence_size=args.input_sentence_size,
        )
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    note = ""
    if tok.vocab_size < args.vocab_size:
        note = f"; asked for {args.vocab_size}, the corpus gave no more pieces"
    print(f"wrote {tok.path} (vocab_size={tok.vocab_size}{note}; {len(files)} input files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
