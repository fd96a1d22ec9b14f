"""The tokenizer stored in a GGUF/GGML file (``tokenizer.ggml.*``), encoding as llama.cpp does.

- ``llama`` (SentencePiece): space prefix, ``▁`` for spaces, highest-score bigram merges first,
  unknown characters as ``<0xXX>`` byte tokens.
- ``gpt2`` (byte-level BPE, also qwen2/llama3): pre-split by the regexes llama.cpp uses for
  ``tokenizer.ggml.pre`` (``llm_tokenizer_bpe`` in llama-vocab.cpp), merges by rank. An unknown
  ``pre`` is an error, as it is for llama.cpp.
- ``gemma4`` (BPE on raw UTF-8 with ``▁`` for spaces, split only at newlines, ``<0xXX>`` byte fallback).

``eog_ids`` are the tokens llama.cpp ends a generation at (eos, eot, ``<|im_end|>``, ``<end_of_turn>``, ...),
found by the same rules as llama-vocab.cpp; like llama.cpp, they become control tokens.

Special (control) tokens written in the text are parsed only with ``parse_special=True``
(chat templates need it); user-defined tokens always are, as in llama.cpp.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from ..errors import UserError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_QWEN2_SPLIT = (r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
_LLAMA3_SPLIT = _QWEN2_SPLIT.replace(r"|\p{N}|", r"|\p{N}{1,3}|")
# llama.cpp's "default" BPE pre-tokenizer: several regexes applied one after the other, each splitting
# the pieces of the previous one (text between matches stays a piece of its own).
_DEFAULT_SPLITS = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2_SPLIT, r"\p{N}+", r"[0-9][0-9][0-9]")
_QWEN35_SPLIT = (r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"""
                 r"""| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# llama.cpp's own form of Tekken's regex (lookaheads instead of \p{Lu}/\p{Ll} classes)
_TEKKEN_SPLIT = (r"""[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"""
                 r"""|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"""
                 r"""|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
_FALCON_SPLITS = (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2_SPLIT.removesuffix(r"|\s+"), r"[0-9][0-9][0-9]")
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_DEEPSEEK_LLM_SPLITS = (
    r"[\r\n]",
    r"\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    r"\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481"
    r"\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b"
    r"\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b"
    r"\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
    r"\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    r"\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4"
    r"\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    r"\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    r"\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    r"\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    r"\s+$",
    _CJK,
    r"\p{N}+",
)
_DEEPSEEK_CODER_SPLITS = (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}")
_DEEPSEEK3_SPLITS = (r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
                     r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
                     r"""| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


@dataclass(frozen=True)
class _PreTokenizer:
    """How llama.cpp pre-tokenizes one ``tokenizer.ggml.pre`` family (llama-vocab.cpp, llama_vocab::impl::load)."""

    splits: tuple[str, ...]
    ignore_merges: bool = False  # a pre-token that is itself a vocab token is taken whole, without merges
    add_bos: bool = False  # default of tokenizer.ggml.add_bos_token when the file does not set it
    byte_encode: bool = True  # GPT-2's byte -> character map; False: raw UTF-8 with <0xXX> byte tokens
    escape_spaces: bool = False  # spaces become "▁" before splitting (SPM-style BPE)


def _family(pre: _PreTokenizer, *names: str) -> dict[str, _PreTokenizer]:
    return dict.fromkeys(names, pre)


_PRES = {
    **_family(_PreTokenizer(_DEFAULT_SPLITS), "default"),
    **_family(_PreTokenizer((_GPT2_SPLIT,)), "gpt-2", "phi-2", "gigachat", "a.x-4.0", "mellum", "exaone4", "mpt",
              "olmo", "jais", "trillion", "granite-docling"),
    **_family(_PreTokenizer((r"\p{N}", _GPT2_SPLIT)), "starcoder", "refact", "command-r", "smollm", "codeshell",
              "exaone", "minerva-7b", "mellum2"),
    **_family(_PreTokenizer((_QWEN2_SPLIT,)), "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2",
              "hunyuan", "solar-open"),
    **_family(_PreTokenizer((_QWEN35_SPLIT,)), "qwen35"),
    **_family(_PreTokenizer((_LLAMA3_SPLIT,), ignore_merges=True, add_bos=True), "llama3", "llama-v3", "llama-bpe",
              "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
    **_family(_PreTokenizer((_LLAMA3_SPLIT,)), "dbrx", "smaug-bpe", "chatglm-bpe"),
    **_family(_PreTokenizer((_LLAMA3_SPLIT,), ignore_merges=True), "glm4", "glm5"),
    **_family(_PreTokenizer((_TEKKEN_SPLIT,), ignore_merges=True, add_bos=True), "tekken"),
    **_family(_PreTokenizer(_FALCON_SPLITS), "falcon"),
    **_family(_PreTokenizer(_DEEPSEEK_LLM_SPLITS), "deepseek-llm"),
    **_family(_PreTokenizer(_DEEPSEEK_CODER_SPLITS), "deepseek-coder"),
    **_family(_PreTokenizer(_DEEPSEEK3_SPLITS), "deepseek-v3", "hunyuan-dense"),
    **_family(_PreTokenizer((r"[^\n]+|[\n]+",), add_bos=True, byte_encode=False, escape_spaces=True), "gemma4"),
}
# llama.cpp's special-token ids for a gpt2 vocabulary whose file names none (llama-vocab.cpp: "default special tokens").
_BPE_DEFAULT_BOS_EOS = 11
_BPE_MODELS = ("gpt2", "gemma4")
# Token texts llama.cpp takes as end-of-turn / fill-in-the-middle tokens when the file names none, and as
# end-of-generation always (llama-vocab.cpp: "auto-detect special tokens by text", special_eog_ids).
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
              "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_FIM_TEXTS = {"fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
              "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
              "fim_sep": ("<|file_sep|>",)}
_EOG_TEXTS = frozenset(("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
                        "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
                        "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
                        "<｜end▁of▁sentence｜>", "[e~["))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (byte-level BPE vocabularies)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars), strict=False))


@dataclass
class Tokenizer:
    """Encode/decode with a GGUF vocabulary; ``bos_id``/``eos_id`` come from the file."""

    model: str
    tokens: list[str]
    scores: list[float]
    types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    pre: str = "default"
    chat_template: str | None = None
    eot_id: int | None = None
    named_ids: dict[str, int] | None = None  # eom/fim_pad/fim_rep/fim_sep ids the file names
    model_name: str = ""  # general.name: llama.cpp gives Phi-3's special tokens rstrip by it

    def __post_init__(self) -> None:
        self._ids = {tok: i for i, tok in enumerate(self.tokens)}
        self.eog_ids = self._end_of_generation()
        self._special = sorted(
            (t for i, t in enumerate(self.tokens) if self.types[i] in (CONTROL, USER_DEFINED, UNKNOWN) and t),
            key=len, reverse=True)
        self._rstrip: set[str] = set()
        if "phi-3" in self.model_name.lower() or "phi3" in self.model_name.lower():
            # llama-vocab.cpp: whitespace after Phi-3's special tokens (and </s>) is dropped, except after these
            self._rstrip = ({*self._special, "</s>"} & self._ids.keys()) - {"<unk>", "<s>", "<|endoftext|>"}
        if self.model in _BPE_MODELS:
            import regex

            scheme = _PRES[self.pre]
            self._splits = [regex.compile(pattern) for pattern in scheme.splits]
            self._scheme = scheme
            self._ranks = {}
            for rank, merge in enumerate(self.merges):
                cut = merge.find(" ", 1)  # as llama.cpp splits a merge (a pair may start with a space)
                if cut > 0:
                    self._ranks.setdefault((merge[:cut], merge[cut + 1:]), rank)
            self._b2u = bytes_to_unicode()
            self._u2b = {c: b for b, c in self._b2u.items()}
            self._cache: dict[str, list[int]] = {}

    def _end_of_generation(self) -> frozenset[int]:
        """llama.cpp's special_eog_ids; like llama.cpp, the tokens found by text become control tokens."""
        named = dict(self.named_ids or {})
        if self.eot_id is None:
            self.eot_id = next((self._ids[t] for t in _EOT_TEXTS if t in self._ids), None)
        for key, texts in _FIM_TEXTS.items():
            if key not in named:
                found = next((self._ids[t] for t in texts if t in self._ids), None)
                if found is not None:
                    named[key] = found
        by_text = {i for t, i in self._ids.items() if t in _EOG_TEXTS}  # holds every _EOT_TEXTS token too
        for token in by_text:
            self.types[token] = CONTROL
        eog = by_text | {named[k] for k in ("fim_pad", "fim_rep", "fim_sep") if k in named}
        eog |= {i for i in (self.eos_id, self.eot_id, named.get("eom")) if i is not None and 0 <= i < len(self.tokens)}
        end = self._ids.get("<|end|>")
        names = self._ids.keys()
        if end in eog and ({"<|return|>", "<|call|>"} <= names or {"<|calls|>", "<|flush|>"} <= names):
            eog.discard(end)  # o200k_harmony / solar-open: <|end|> ends a message, not the generation
            self.types[end] = USER_DEFINED
        close = self._ids.get("</s>")
        if close in eog and ({"<|tool_response>", "<|plamo:eos|>"} & {self.tokens[i] for i in eog}):
            eog.discard(close)  # gemma4 / plamo: </s> is a normal token
            self.types[close] = NORMAL
        return frozenset(eog)

    @classmethod
    def from_metadata(cls, meta: dict, source: str = "model") -> Tokenizer:
        """Build from ``tokenizer.ggml.*`` / ``tokenizer.chat_template`` values."""
        model = str(meta.get("tokenizer.ggml.model", ""))
        tokens = list(meta.get("tokenizer.ggml.tokens") or [])
        if model not in ("llama", *_BPE_MODELS) or not tokens:
            raise UserError(f"{source}: tokenizer {model or 'missing'!r} is not supported (supported: llama SPM, gpt2 "
                            "and gemma4 BPE); use a GGUF converted by llama.cpp's convert_hf_to_gguf.py")
        types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
        scores = list(meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens))

        def ident(key: str) -> int | None:
            value = meta.get(f"tokenizer.ggml.{key}")
            return None if value is None else int(value)

        spm = model == "llama"
        pre = "gemma4" if model == "gemma4" else str(meta.get("tokenizer.ggml.pre") or "default")
        if not spm and pre not in _PRES:
            raise UserError(f"{source}: tokenizer.ggml.pre {pre!r} is not supported (supported: "
                            f"{', '.join(sorted(_PRES))}); use the model's HF folder as the base instead")
        add_bos = spm or _PRES[pre].add_bos
        if model == "gpt2" and len(tokens) > _BPE_DEFAULT_BOS_EOS:
            meta = {"tokenizer.ggml.bos_token_id": _BPE_DEFAULT_BOS_EOS,
                    "tokenizer.ggml.eos_token_id": _BPE_DEFAULT_BOS_EOS, **meta}
        return cls(
            model=model, tokens=tokens, scores=[float(s) for s in scores], types=[int(t) for t in types],
            merges=list(meta.get("tokenizer.ggml.merges") or []),
            bos_id=ident("bos_token_id"), eos_id=ident("eos_token_id"), unk_id=ident("unknown_token_id"),
            # llama.cpp turns add_bos on for gemma4 whatever the file says
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", add_bos)) or pre == "gemma4",
            add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
            add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", spm)),
            pre=pre,
            chat_template=meta.get("tokenizer.chat_template"),
            model_name=str(meta.get("general.name") or ""),
            eot_id=ident("eot_token_id"),
            named_ids={k: v for k in ("eom", "fim_pad", "fim_rep", "fim_sep")
                       if (v := ident(f"{k}_token_id")) is not None},
        )

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def bos_token(self) -> str:
        return self.tokens[self.bos_id] if self.bos_id is not None else ""

    @property
    def eos_token(self) -> str:
        return self.tokens[self.eos_id] if self.eos_id is not None else ""

    # -- encoding ---------------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False,
               space_prefix: bool = True) -> list[int]:
        """Token ids of ``text`` like ``llama_tokenize(text, add_special, parse_special)``.

        ``space_prefix=False`` drops SPM's leading space (for a response appended to a prompt).
        """
        out: list[int] = []
        if add_special and self.add_bos and self.bos_id is not None:
            out.append(self.bos_id)
        prev_special = space_prefix
        for piece, token in self._partition(text, parse_special):
            if token is not None:
                out.append(token)
                prev_special = True
                continue
            if not piece:
                continue
            if self.model == "llama":
                prefix = " " if self.add_space_prefix and prev_special else ""
                out.extend(self._spm((prefix + piece).replace(" ", "▁")))
            else:
                out.extend(self._bpe(piece.replace(" ", "▁") if self._scheme.escape_spaces else piece))
            prev_special = False
        if add_special and self.add_eos and self.eos_id is not None:
            out.append(self.eos_id)
        return out

    def _partition(self, text: str, parse_special: bool) -> list[tuple[str, int | None]]:
        """Split text on special token strings: [(text, None) | (token text, id)]."""
        specials = [t for t in self._special
                    if parse_special or self.types[self._ids[t]] == USER_DEFINED]
        parts: list[tuple[str, int | None]] = [(text, None)]
        for special in specials:
            token = self._ids[special]
            nxt: list[tuple[str, int | None]] = []
            for chunk, tid in parts:
                if tid is not None or special not in chunk:
                    nxt.append((chunk, tid))
                    continue
                pieces = chunk.split(special)
                for i, p in enumerate(pieces):
                    if i:
                        nxt.append((special, token))
                        if special in self._rstrip:
                            p = p.lstrip(" \t\n\v\f\r")
                    if p:
                        nxt.append((p, None))
            parts = nxt
        return parts

    def _byte_token(self, byte: int) -> int:
        token = self._ids.get(f"<0x{byte:02X}>")
        if token is None:
            token = self._ids.get(chr(byte), self.unk_id if self.unk_id is not None else 0)
        return token

    def _spm(self, text: str) -> list[int]:
        """llama.cpp's SPM: merge the best-scoring adjacent pair that is a token, repeatedly."""
        def priority(merged: str, left: str, right: str) -> float | None:
            token = self._ids.get(merged)
            return None if token is None else -self.scores[token]

        out: list[int] = []
        for sym in _merge(list(text), priority):
            token = self._ids.get(sym)
            if token is not None:
                out.append(token)
            else:
                out.extend(self._byte_token(b) for b in sym.encode("utf-8"))
        return out

    def _pre_split(self, text: str) -> list[str]:
        """llama.cpp's unicode_regex_split: each regex splits every piece; unmatched text stays a piece."""
        pieces = [text]
        for pattern in self._splits:
            nxt: list[str] = []
            for piece in pieces:
                start = 0
                for match in pattern.finditer(piece):
                    if match.start() > start:
                        nxt.append(piece[start:match.start()])
                    if match.end() > match.start():
                        nxt.append(match.group())
                    start = match.end()
                if start < len(piece):
                    nxt.append(piece[start:])
            pieces = nxt
        return pieces

    def _bpe(self, text: str) -> list[int]:
        out: list[int] = []
        scheme = self._scheme
        for word in self._pre_split(text):
            cached = self._cache.get(word)
            if cached is None:
                encoded = "".join(self._b2u[b] for b in word.encode("utf-8")) if scheme.byte_encode else word
                whole = None
                if scheme.ignore_merges or (self.pre == "gemma4" and not word.strip("\n")):
                    whole = self._ids.get(encoded)  # gemma4: a run of newlines is one token when the vocab has it
                cached = [whole] if whole is not None else self._bpe_word(encoded)
                if len(self._cache) < 100_000:
                    self._cache[word] = cached
            out.extend(cached)
        return out

    def _bpe_word(self, word: str) -> list[int]:
        out = []
        for part in _merge(list(word), lambda merged, left, right: self._ranks.get((left, right))):
            token = self._ids.get(part)
            if token is not None:
                out.append(token)
            elif self._scheme.byte_encode:
                # llama.cpp falls back to single-byte tokens and drops what has none (no <unk> in BPE).
                out.extend(self._ids[c] for c in part if len(c.encode("utf-8")) == 1 and c in self._ids)
            else:
                out.extend(t for b in part.encode("utf-8") if (t := self._ids.get(f"<0x{b:02X}>")) is not None)
        return out

    # -- decoding ---------------------------------------------------------------------------------

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        """Text of ``ids``; SPM's added leading space is removed."""
        data = bytearray()
        for pos, token in enumerate(ids):
            kind = self.types[token]
            text = self.tokens[token]
            if kind in (CONTROL, UNKNOWN, UNUSED):
                if not skip_special:
                    data += text.encode("utf-8")
                continue
            if self.model == "llama" or (self.model in _BPE_MODELS and not self._scheme.byte_encode):
                if kind == BYTE and text.startswith("<0x"):
                    data.append(int(text[3:5], 16))
                    continue
                piece = text.replace("▁", " ")
                if not data and self.add_space_prefix and piece.startswith(" ") and pos <= 1:
                    piece = piece[1:]
                data += piece.encode("utf-8")
            elif kind == USER_DEFINED:
                data += text.encode("utf-8")
            else:
                data += bytes(self._u2b.get(c, ord("?")) for c in text)
        return data.decode("utf-8", errors="replace")


def _merge(syms: list[str], priority) -> list[str]:
    """Merge adjacent symbols, lowest ``priority(merged, left, right)`` first (ties: leftmost), until none applies.

    llama.cpp's SPM (priority: minus the merged token's score) and BPE (priority: the pair's merge rank)
    loops: a heap of candidate pairs, stale entries skipped.
    """
    if not syms:
        return []
    nxt = list(range(1, len(syms) + 1))
    nxt[-1] = -1
    prev = list(range(-1, len(syms) - 1))
    heap: list[tuple[float, int, int, int]] = []

    def add(left: int, right: int) -> None:
        if left == -1 or right == -1:
            return
        rank = priority(syms[left] + syms[right], syms[left], syms[right])
        if rank is not None:
            heapq.heappush(heap, (rank, left, right, len(syms[left]) + len(syms[right])))

    for i in range(1, len(syms)):
        add(i - 1, i)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        if not syms[left] or not syms[right] or nxt[left] != right or len(syms[left]) + len(syms[right]) != size:
            continue
        syms[left] += syms[right]
        syms[right] = ""
        nxt[left] = nxt[right]
        if nxt[right] != -1:
            prev[nxt[right]] = left
        add(prev[left], left)
        add(left, nxt[left])
    return [sym for sym in syms if sym]


class HFTokenizer:
    """The same interface over a transformers tokenizer, for HF-folder bases."""

    def __init__(self, folder: str) -> None:
        try:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as exc:  # missing files, missing sentencepiece, ...
            raise UserError(f"{folder}: cannot load its tokenizer ({exc.__class__.__name__}); "
                            "save the tokenizer into the model folder") from None
        self.bos_id = self._tok.bos_token_id
        self.eos_id = self._tok.eos_token_id
        self.unk_id = self._tok.unk_token_id
        probe = self._tok("a")["input_ids"]
        self.add_bos = bool(probe) and self.bos_id is not None and probe[0] == self.bos_id
        self.add_eos = bool(probe) and self.eos_id is not None and probe[-1] == self.eos_id
        self.chat_template = getattr(self._tok, "chat_template", None)
        self.eot_id: int | None = None
        self.eog_ids = frozenset(i for i in (self.eos_id,) if i is not None)

    def __len__(self) -> int:
        return len(self._tok)

    @property
    def bos_token(self) -> str:
        return self._tok.bos_token or ""

    @property
    def eos_token(self) -> str:
        return self._tok.eos_token or ""

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False,
               space_prefix: bool = True) -> list[int]:
        """Token ids; special-token parsing follows the transformers tokenizer."""
        return list(self._tok(text, add_special_tokens=add_special)["input_ids"])

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        """Text of ``ids``."""
        return self._tok.decode(ids, skip_special_tokens=skip_special)
