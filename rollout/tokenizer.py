"""The project's tokenizer: a byte-level BPE trained offline on the training split.

Trained with ``tokenizers`` and wrapped as a ``transformers`` fast tokenizer, saved with the
data (``DIR/tokenizer/``) and later with every checkpoint. Every token count and compression
figure in the project uses it, through :class:`validator_actors.tokens.TokenCounter`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

# IR pieces stay whole so BPE can learn them as single tokens: an atom followed by an
# operator or the end (C3?, I*, V!), a context (:audit), an output (>_runs/x), an alias.
IR_PIECES = r"(?:[A-Z](?:[0-9]+|\*)?[?!]?)(?=[&|:>]|$)|:[a-z]+|>[A-Za-z0-9_./-]+|@[A-Z_]+"
# the GPT-2 split for everything else
GPT2_PIECES = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
SPECIAL_TOKENS = {"pad_token": "<|pad|>", "bos_token": "<|bos|>", "eos_token": "<|eos|>",
                  "sep_token": "<|sep|>"}


def train_bpe(texts: Iterable[str], vocab_size: int = 2048) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` (deterministic for the same texts in the same order)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(f"{IR_PIECES}|{GPT2_PIECES}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: str | Path) -> Path:
    """Save as a ``transformers`` fast tokenizer (``AutoTokenizer.from_pretrained`` opens it)."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    out = Path(out_dir)
    fast.save_pretrained(str(out))
    return out

