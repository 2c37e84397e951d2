"""``tinycompress validate``: check one program and print the validator's report as JSON.

    tinycompress validate 'C3?:build' --intent "please check rule 3 while building"
    tinycompress validate 'C3' --reference 'C3?:build'      # exit 1, HASH_MISMATCH

Exit code 0 when the program is valid, 1 when it is not, 2 on a usage error (an invalid
reference program, a missing tokenizer). Imports neither Ray nor torch.
"""

from __future__ import annotations

import argparse
import json
import sys

from validator_actors.validator import HEX64, Validator, lexical_token_count


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "validate", help="validate one IR program and print the report as JSON",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("program", metavar="PROGRAM", help="the IR program, e.g. 'C3?:build'")
    p.add_argument("--intent", metavar="TEXT", help="the intent it compresses; adds 'compression'")
    p.add_argument("--reference", metavar="PROGRAM_OR_HASH",
                   help="reference program or 64-hex hash: adds the fidelity check (HASH_MISMATCH)")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="trained tokenizer folder (DATA/tokenizer) or its tokenizer.json; "
                        "default: the lexical fallback count")
    p.set_defaults(func=run)


def _counter(path: str | None):
    """(count function, its name for the JSON)."""
    if path is None:
        return lexical_token_count, "lexical"
    from validator_actors.tokens import TokenCounter

    counter = TokenCounter(path)
    return counter, f"bpe:{counter.path}"


def run(args: argparse.Namespace) -> int:
    validator = Validator()
    if args.reference is not None and not HEX64.match(args.reference):
        ref_report = validator.validate(args.reference)
        if not ref_report.valid:
            print(f"error: the reference program {args.reference!r} is invalid: "
                  f"{', '.join(ref_report.codes)}", file=sys.stderr)
            return 2
    try:
        count, counter_name = _counter(args.tokenizer)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = validator.validate(args.program, args.reference)
    out = report.to_dict()
    out["token_counter"] = counter_name
    out["tokens"] = count([args.program])[0]
    if args.intent is not None:
        intent_tokens = count([args.intent])[0]
        out["intent_tokens"] = intent_tokens
        # an invalid program compresses nothing: its compression is null, as over HTTP
        out["compression"] = 1.0 - out["tokens"] / intent_tokens if intent_tokens and report.valid else None
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0 if report.valid else 1

