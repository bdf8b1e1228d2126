"""An exported LLM .tflite as an LlmSession on LiteRT's CompiledModel API (XNNPACK), its KV cache held in place.

The KV cache is one set of LiteRT tensor buffers (made with `create_input_buffer_by_name`) passed as both the
input and the output of every signature, so no call copies the cache: the Interpreter's signature runner copies
the whole cache (11.8 MB for SmolLM2-135M at 256 positions) in and out on every token, which a probe on an
AVX2 EPYC measured as 17-46 % slower decoding. A decode step runs the smallest `decode_<W>` signature whose
window holds the position (attention over W positions instead of the whole cache), else `decode`. Prefill
signatures return no logits (litert-torch's layout):
`prefill(ids)` runs the smallest `prefill_<N>` that holds ids[:-1] (zero-padded; the padded positions are
overwritten before any later position attends to them, the causal mask hides them until then) and decodes the
last prompt token, whose logits predict the first new token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeopt.errors import InputError, first_line
from edgeopt.llm.export import read_sidecar
from edgeopt.llm.session import check_prompt
from edgeopt.measure import litert as lr


def find_tflite(path: str | Path) -> Path:
    """The LLM .tflite at `path`: the file itself, or the single .tflite in a folder (a pipeline stage folder)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.tflite"))
        if len(files) != 1:
            raise InputError(f"{p}: expected one .tflite file in the folder, found {len(files)}")
        return files[0]
    if not p.is_file():
        raise InputError(f"{p}: no such file or folder")
    return p


def weight_cache_file(path: Path) -> Path:
    """Where XNNPACK's packed weights of `path` are kept: $EDGEOPT_CACHE/xnnpack/<hash of path, size, mtime>.xnn."""
    import hashlib

    from edgeopt.zoo.llm import cache_root

    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    out = cache_root().parent / "xnnpack" / f"{key}.xnn"
    if not out.exists():
        evict_weight_caches(out.parent)
    return out


WEIGHT_CACHE_BYTES = 2 << 30  # the packed-weight files kept; the least recently used go first


def evict_weight_caches(folder: Path, keep_bytes: int = WEIGHT_CACHE_BYTES) -> list[Path]:
    """Delete the least recently used packed-weight files in `folder` until they take at most `keep_bytes`
    (keys name a file's path and mtime, so files of deleted or rewritten models are never used again).
    Returns the files deleted; a file another process removes first is skipped."""
    files = []
    for f in folder.glob("*.xnn") if folder.is_dir() else ():
        try:
            st = f.stat()
        except OSError:
            continue
        files.append((max(st.st_atime, st.st_mtime), st.st_size, f))
    total = sum(size for _, size, _ in files)
    gone = []
    for _, size, f in sorted(files):
        if total <= keep_bytes:
            break
        try:
            f.unlink()
        except OSError:
            continue
        total -= size
        gone.append(f)
    return gone


class LiteRtLlm:
    """A multi-signature LLM .tflite (prefill_<N>, decode, optional score_<L>) on `threads` XNNPACK threads.

    `weight_cache` ("auto": a file under the edgeopt cache, see `weight_cache_file`; None: off) keeps XNNPACK's
    packed weights in one memory-mapped file that every signature shares; without it each signature packs its
    own copy. Measured on SmolLM2-135M (4 signatures): peak RSS 777 -> 348 MB for dynamic int8, 4.2 -> 3.0 GB for
    weight-only int8 (XNNPACK runs those in fp32), the same decode speed, and a faster load once the file exists.
    """

    name = "litert"

    def __init__(self, path: str | Path, threads: int = 2, weight_cache: str | Path | None = "auto"):
        self.path = find_tflite(path)
        if weight_cache == "auto":
            weight_cache = weight_cache_file(self.path)
        self.facts = read_sidecar(self.path)
        from edgeopt.analyze.tflite import tflite_info

        info = tflite_info(self.path)  # one line for a truncated or corrupt file
        self.signatures = info["signatures"]
        if "decode" not in self.signatures:
            raise InputError(f"{self.path}: no 'decode' signature (signatures: {', '.join(self.signatures)}); "
                             "not an LLM exported with convert.litert_llm")
        self.prefill_lens = sorted(int(k.split("_", 1)[1]) for k in self.signatures
                                   if k.startswith("prefill_") and k.split("_", 1)[1].isdigit())
        self.score_lens = sorted(int(k.split("_", 1)[1]) for k in self.signatures
                                 if k.startswith("score_") and k.split("_", 1)[1].isdigit())
        # decode_<W>: decode attending over the first W positions (export.convert's decode_windows)
        self.decode_windows = sorted(int(k.split("_", 1)[1]) for k in self.signatures
                                     if k.startswith("decode_") and k.split("_", 1)[1].isdigit())
        dec = self.signatures["decode"]
        self._kv_names = [t["name"] for t in dec["inputs"] if t["name"].startswith("kv_cache_")]
        kv_specs = {t["name"]: t for t in dec["inputs"] if t["name"] in self._kv_names}
        # positions: the sidecar's (transposed layout: K is (1, kv heads, len, dim), V (1, kv heads, dim, len))
        self.max_cache = int(self.facts["kv_cache_max_len"])
        logits = next(t for t in dec["outputs"] if t["name"] == "logits")
        self.vocab_size = int(logits["shape"][-1])
        self.max_prompt = (self.prefill_lens[-1] if self.prefill_lens else 0) + 1
        self.threads = int(threads)
        if self.threads < 1:
            raise InputError(f"{self.path}: threads must be >= 1, got {threads}")
        self.label = f"LiteRT CompiledModel · XNNPACK · {self.threads} thread{'s' if self.threads > 1 else ''}"
        try:
            with lr.quiet_native_stderr():
                self._cm = lr.open_compiled_model(self.path, self.threads, weight_cache)
                self._kv = {n: self._cm.create_input_buffer_by_name("decode", n) for n in self._kv_names}
                # new buffers hold whatever memory they got: a NaN there poisons attention (the causal mask is
                # added, and NaN + -inf is NaN), so the cache starts as zeros
                for n, b in self._kv.items():
                    b.write(np.zeros([int(d) for d in kv_specs[n]["shape"]], dtype=np.dtype(kv_specs[n]["dtype"])))
                self._io: dict[str, dict[str, Any]] = {}
                for sig in self.signatures:
                    self._io[sig] = {
                        "tokens": self._cm.create_input_buffer_by_name(sig, "tokens"),
                        "input_pos": self._cm.create_input_buffer_by_name(sig, "input_pos"),
                        "logits": (self._cm.create_output_buffer_by_name(sig, "logits")
                                   if any(t["name"] == "logits" for t in self.signatures[sig]["outputs"]) else None)}
                self._warm = False
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{self.path}: LiteRT cannot load the model ({first_line(e, 200)})") from None
        self.position = 0  # tokens in the cache

    # --- running -----------------------------------------------------------------------------------------------
    def _run(self, sig: str, tokens: np.ndarray, pos: np.ndarray) -> np.ndarray | None:
        if not self._warm:  # the first call makes the LiteRT environment and registers accelerators, loudly
            with lr.quiet_native_stderr():
                out = self._call(sig, tokens, pos)
            self._warm = True
            return out
        return self._call(sig, tokens, pos)

    def _call(self, sig: str, tokens: np.ndarray, pos: np.ndarray) -> np.ndarray | None:
        io = self._io[sig]
        ins = {"tokens": io["tokens"], "input_pos": io["input_pos"], **self._kv}
        outs = dict(self._kv)  # the same buffers in and out: the cache is updated in place
        if io["logits"] is not None:
            outs["logits"] = io["logits"]
        try:
            io["tokens"].write(np.ascontiguousarray(tokens, dtype=np.int32))
            io["input_pos"].write(np.ascontiguousarray(pos, dtype=np.int32))
            self._cm.run_by_name(sig, ins, outs)
        except Exception as e:
            raise InputError(f"{self.path}: {sig} failed: {first_line(e, 200)}") from None
        if io["logits"] is None:
            return None
        n = int(tokens.shape[1]) * self.vocab_size
        return io["logits"].read(n, np.float32).reshape(int(tokens.shape[1]), self.vocab_size)

    def _prefill_len(self, n: int) -> int:
        return next(n_sig for n_sig in self.prefill_lens if n_sig >= n)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        ids = [int(t) for t in ids]
        check_prompt(self, len(ids))
        head = ids[:-1]
        if head:
            n = self._prefill_len(len(head))
            tokens = np.zeros((1, n), dtype=np.int32)
            tokens[0, :len(head)] = head
            self._run(f"prefill_{n}", tokens, np.arange(n, dtype=np.int32))
        self.position = len(head)
        return self.decode(ids[-1])

    def decode(self, token: int) -> np.ndarray:
        if self.position >= self.max_cache:
            raise InputError(f"the KV cache is full ({self.max_cache} tokens)")
        window = next((w for w in self.decode_windows if w > self.position), None)
        sig = "decode" if window is None else f"decode_{window}"
        logits = self._run(sig, np.array([[int(token)]], dtype=np.int32), np.array([self.position], dtype=np.int32))
        self.position += 1
        return logits[0]

    def score(self, ids: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits (len(ids), vocab) through the smallest `score_<L>` that holds ids (zero-padded);
        without a score signature, by decoding the tokens one at a time."""
        ids = [int(t) for t in ids]
        fits = [n for n in self.score_lens if n >= len(ids)]
        if not fits:
            if len(ids) > self.max_cache:
                raise InputError(f"a {len(ids)}-token sequence does not fit the KV cache ({self.max_cache})")
            self.position = 0
            return np.stack([self.decode(t) for t in ids])
        n = fits[0]
        tokens = np.zeros((1, n), dtype=np.int32)
        tokens[0, :len(ids)] = ids
        logits = self._run(f"score_{n}", tokens, np.arange(n, dtype=np.int32))
        self.position = len(ids)
        return logits[:len(ids)]

    def close(self) -> None:
        cm = getattr(self, "_cm", None)
        self._cm = None
        self._io, self._kv = {}, {}
        if cm is not None:
            with lr.quiet_native_stderr():
                cm.close()

    def __enter__(self) -> LiteRtLlm:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
