"""Caption augmentation (shuffle with keep_tokens, caption and tag dropout, trigger word) and the
deterministic random streams of the dataset.

Every random choice is drawn from a generator seeded by (seed, epoch, item index, purpose), never
from global state, so a resumed run sees exactly the same captions, flips, crops and order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# one stream per kind of decision, so adding a new augmentation does not shift the others
PURPOSE = {"caption": 1, "flip": 2, "crop": 3, "order": 4}


def item_rng(seed: int, epoch: int, index: int, purpose: str) -> np.random.Generator:
    """The random generator for one decision about one item in one epoch."""
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index, PURPOSE[purpose]]))


def split_tags(caption: str) -> list[str]:
    """Comma-separated tags of a caption, stripped, empties dropped."""
    return [t.strip() for t in caption.split(",") if t.strip()]


def with_trigger(caption: str, trigger_word: str) -> str:
    """``caption`` with the trigger word as its first tag (moved there if already present)."""
    trigger = trigger_word.strip()
    if not trigger:
        return caption
    tags = [t for t in split_tags(caption) if t != trigger]
    return ", ".join([trigger, *tags])


@dataclass(frozen=True)
class CaptionOptions:
    """The caption keys of the config."""

    shuffle: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    tag_dropout_rate: float = 0.0
    trigger_word: str = ""

    @property
    def is_static(self) -> bool:
        """True when a caption never changes between epochs (text-encoder outputs may be cached)."""
        return not (self.shuffle or self.caption_dropout_rate > 0 or self.tag_dropout_rate > 0)


def process_caption(caption: str, options: CaptionOptions, rng: np.random.Generator | None) -> str:
    """The caption the model sees: caption dropout, then tag dropout and shuffle after the kept tags.

    The trigger word is always first and kept (``keep_tokens`` counts the tags after it); caption
    dropout empties the whole caption, trigger included, as kohya does. Without randomness
    (``options.is_static``) tags keep their original text and order.
    """
    if options.is_static or rng is None:
        return with_trigger(caption, options.trigger_word)
    # draw a fixed number of values in a fixed order so each decision has a stable position
    drop_caption = rng.random() < options.caption_dropout_rate
    trigger = options.trigger_word.strip()
    tags = [t for t in split_tags(caption) if t != trigger] if trigger else split_tags(caption)
    kept, rest = tags[: options.keep_tokens], tags[options.keep_tokens:]
    if options.tag_dropout_rate > 0 and rest:
        keep_mask = rng.random(len(rest)) >= options.tag_dropout_rate
        rest = [t for t, keep in zip(rest, keep_mask, strict=True) if keep]
    if options.shuffle and len(rest) > 1:
        rest = [rest[i] for i in rng.permutation(len(rest))]
    if drop_caption:
        return ""
    return ", ".join(([trigger] if trigger else []) + kept + rest)
