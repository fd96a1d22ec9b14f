"""The tokenizer stored in a GGUF/GGML file (``tokenizer.ggml.*``), encoding as llama.cpp does.

- ``llama`` (SentencePiece): space prefix, ``▁`` for spaces, highest-score bigram merges first,
  unknown characters as ``<0xXX>`` byte tokens.
- ``gpt2`` (byte-level BPE, also qwen2/llama3): pre-split by the regexes llama.cpp uses for
  ``tokenizer.ggml.pre`` (``llm_tokenizer_bpe`` in llama-vocab.cpp), merges by rank. An unknown
  ``pre`` is an error, as it is for llama.cpp.

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


@dataclass(frozen=True)
class _PreTokenizer:
    """How llama.cpp pre-tokenizes one ``tokenizer.ggml.pre`` family (llama-vocab.cpp, llama_vocab::impl::load)."""

    splits: tuple[str, ...]
    ignore_merges: bool = False  # a pre-token that is itself a vocab token is taken whole, without merges
    add_bos: bool = False  # default of tokenizer.ggml.add_bos_token when the file does not set it


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
    **_family(_PreTokenizer((_LLAMA3_SPLIT,), ignore_merges=True, add_bos=True), "llama3", "llama-v3", "llama-bpe",
              "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
    **_family(_PreTokenizer((_LLAMA3_SPLIT,)), "dbrx", "smaug-bpe"),
}
# llama.cpp's special-token ids for a gpt2 vocabulary whose file names none (llama-vocab.cpp: "default special tokens").
_BPE_DEFAULT_BOS_EOS = 11


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

    def __post_init__(self) -> None:
        self._ids = {tok: i for i, tok in enumerate(self.tokens)}
        self._special = sorted(
            (t for i, t in enumerate(self.tokens) if self.types[i] in (CONTROL, USER_DEFINED, UNKNOWN) and t),
            key=len, reverse=True)
        if self.model == "gpt2":
            import regex

            scheme = _PRES[self.pre]
            self._splits = [regex.compile(pattern) for pattern in scheme.splits]
            self._ignore_merges = scheme.ignore_merges
            self._ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(self.merges)}
            self._b2u = bytes_to_unicode()
            self._u2b = {c: b for b, c in self._b2u.items()}
            self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_metadata(cls, meta: dict, source: str = "model") -> Tokenizer:
        """Build from ``tokenizer.ggml.*`` / ``tokenizer.chat_template`` values."""
        model = str(meta.get("tokenizer.ggml.model", ""))
        tokens = list(meta.get("tokenizer.ggml.tokens") or [])
        if model not in ("llama", "gpt2") or not tokens:
            raise UserError(f"{source}: tokenizer {model or 'missing'!r} is not supported (supported: llama SPM, gpt2 "
                            "BPE); use a GGUF converted by llama.cpp's convert_hf_to_gguf.py")
        types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
        scores = list(meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens))

        def ident(key: str) -> int | None:
            value = meta.get(f"tokenizer.ggml.{key}")
            return None if value is None else int(value)

        spm = model == "llama"
        pre = str(meta.get("tokenizer.ggml.pre") or "default")
        if not spm and pre not in _PRES:
            raise UserError(f"{source}: tokenizer.ggml.pre {pre!r} is not supported (supported: "
                            f"{', '.join(sorted(_PRES))}); use the model's HF folder as the base instead")
        add_bos = spm or _PRES[pre].add_bos
        if not spm and len(tokens) > _BPE_DEFAULT_BOS_EOS:
            meta = {"tokenizer.ggml.bos_token_id": _BPE_DEFAULT_BOS_EOS,
                    "tokenizer.ggml.eos_token_id": _BPE_DEFAULT_BOS_EOS, **meta}
        return cls(
            model=model, tokens=tokens, scores=[float(s) for s in scores], types=[int(t) for t in types],
            merges=list(meta.get("tokenizer.ggml.merges") or []),
            bos_id=ident("bos_token_id"), eos_id=ident("eos_token_id"), unk_id=ident("unknown_token_id"),
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", add_bos)),
            add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
            add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", spm)),
            pre=pre,
            chat_template=meta.get("tokenizer.chat_template"),
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
                out.extend(self._bpe(piece))
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
        if not text:
            return []
        syms = list(text)
        prev = list(range(-1, len(syms) - 1))
        nxt = list(range(1, len(syms) + 1))
        nxt[-1] = -1
        heap: list[tuple[float, int, int, int]] = []

        def add(left: int, right: int) -> None:
            if left == -1 or right == -1:
                return
            merged = syms[left] + syms[right]
            token = self._ids.get(merged)
            if token is not None:
                heapq.heappush(heap, (-self.scores[token], left, right, len(merged)))

        for i in range(1, len(syms)):
            add(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if not syms[left] or not syms[right] or len(syms[left]) + len(syms[right]) != size:
                continue
            syms[left] += syms[right]
            syms[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] != -1:
                prev[nxt[right]] = left
            add(prev[left], left)
            add(left, nxt[left])
        out: list[int] = []
        i = 0
        while i != -1:
            sym = syms[i]
            token = self._ids.get(sym)
            if token is not None:
                out.append(token)
            else:
                out.extend(self._byte_token(b) for b in sym.encode("utf-8"))
            i = nxt[i]
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
        for word in self._pre_split(text):
            cached = self._cache.get(word)
            if cached is None:
                encoded = "".join(self._b2u[b] for b in word.encode("utf-8"))
                whole = self._ids.get(encoded) if self._ignore_merges else None
                cached = [whole] if whole is not None else self._bpe_word(encoded)
                if len(self._cache) < 100_000:
                    self._cache[word] = cached
            out.extend(cached)
        return out

    def _bpe_word(self, word: str) -> list[int]:
        parts = list(word)
        while len(parts) > 1:
            best, best_rank = -1, None
            for i in range(len(parts) - 1):
                rank = self._ranks.get((parts[i], parts[i + 1]))
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = i, rank
            if best < 0:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        out = []
        for p in parts:
            token = self._ids.get(p)
            if token is None:
                # llama.cpp falls back to single-byte tokens and drops what has none (no <unk> in BPE).
                out.extend(self._ids[c] for c in p if len(c.encode("utf-8")) == 1 and c in self._ids)
            else:
                out.append(token)
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
            if self.model == "llama":
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
