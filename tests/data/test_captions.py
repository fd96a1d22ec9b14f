"""Caption augmentation: trigger word, keep_tokens, shuffle and dropout, all seeded."""

from __future__ import annotations

from extension.data.captions import CaptionOptions, item_rng, process_caption, with_trigger

CAPTION = "1girl, red hair, smile, outdoors, sky, tree, looking at viewer"


def test_trigger_word_first_and_not_duplicated():
    assert with_trigger(CAPTION, "sks") == "sks, " + CAPTION
    assert with_trigger("a, sks, b", "sks") == "sks, a, b"
    assert with_trigger("", "sks") == "sks"
    assert process_caption(CAPTION, CaptionOptions(), None) == CAPTION


def test_shuffle_keeps_tokens_and_tags():
    options = CaptionOptions(shuffle=True, keep_tokens=2, trigger_word="sks")
    seen = set()
    for index in range(20):
        out = process_caption(CAPTION, options, item_rng(7, 0, index, "caption")).split(", ")
        assert out[:3] == ["sks", "1girl", "red hair"]
        assert sorted(out[3:]) == sorted(CAPTION.split(", ")[2:])
        seen.add(tuple(out))
    assert len(seen) > 5


def test_same_seed_epoch_index_same_caption():
    options = CaptionOptions(shuffle=True, tag_dropout_rate=0.3, caption_dropout_rate=0.2)
    a = [process_caption(CAPTION, options, item_rng(1, e, i, "caption")) for e in range(3) for i in range(10)]
    b = [process_caption(CAPTION, options, item_rng(1, e, i, "caption")) for e in range(3) for i in range(10)]
    c = [process_caption(CAPTION, options, item_rng(2, e, i, "caption")) for e in range(3) for i in range(10)]
    assert a == b and a != c


def test_dropout_rates():
    caption_drop = CaptionOptions(caption_dropout_rate=0.25)
    empties = sum(process_caption(CAPTION, caption_drop, item_rng(0, 0, i, "caption")) == "" for i in range(2000))
    assert 400 < empties < 600
    tag_drop = CaptionOptions(tag_dropout_rate=0.5, keep_tokens=1)
    lengths = [len(process_caption(CAPTION, tag_drop, item_rng(0, 0, i, "caption")).split(", ")) for i in range(500)]
    assert 3.5 < sum(lengths) / len(lengths) < 4.5  # 1 kept + half of 6
    assert all(process_caption(CAPTION, tag_drop, item_rng(0, 0, i, "caption")).startswith("1girl")
               for i in range(50))
    assert not tag_drop.is_static and CaptionOptions(trigger_word="x").is_static
