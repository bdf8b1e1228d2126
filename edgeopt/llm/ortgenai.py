"""ONNX Runtime GenAI as an LLM runtime: its model builder on a local Hugging Face folder, and its Generator as an LlmSession.

`build_ortgenai` runs the builder of the `onnxruntime-genai` package (`python -m onnxruntime_genai.models.builder`)
on the CPU execution provider. What each precision builds (0.18):
  fp32  every weight float32 (MatMul, GroupQueryAttention with a float32 KV cache).
  int8  every linear layer and the LM head as MatMulNBits with 8-bit symmetric weights in blocks of 32 along the
        input dimension (round to nearest), accuracy_level 4: the activations are quantized to int8 per block on
        the fly and the product is computed in int8 (MLAS); the embedding table, norms and KV cache stay float32.
  int4  the same with 4-bit weights (also int8 compute at accuracy_level 4).
A model with tied embeddings (SmolLM2) gets the LM head as a separate (quantized) copy of the embedding table
(the builder's `shared_embeddings` option, not used here, would share one quantized table).
The builder reads `config.json`, the safetensors and the tokenizer (it copies the tokenizer files and fails
without one) and needs `onnx-ir`, which onnxruntime-genai does not declare (edgeopt depends on it).

`OrtGenAiLlm` drives `onnxruntime_genai.Model` / `GeneratorParams` / `Generator` token by token:
`append_tokens` runs the model on the given tokens (the prompt, or one chosen token) and `get_logits` returns the
last position's logits; edgeopt picks the next token itself, so `generate_next_token` (genai's own search) is
never used. The thread count goes in through genai's Config API: the model folder's genai_config.json is read
by `og.Config(folder)` and a JSON overlay sets `model.decoder.session_options.intra_op_num_threads = threads`
and `inter_op_num_threads = 1` (the file on disk is not changed), the same settings edgeopt's ONNX Runtime
runner uses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeopt.errors import InputError
from edgeopt.extras import available, require
from edgeopt.llm.session import check_prompt

PRECISIONS = ("fp32", "int8", "int4")  # what the builder offers on the CPU execution provider
STAMP = "edgeopt.json"  # written next to genai_config.json: source folder, precision, genai version
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def _builder_reason(text: str) -> str:
    """The line of the builder's output that says why it failed: the last `SomethingError: …` line, else the last."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception)\b", ln):
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


def build_ortgenai(folder: str | Path, out: str | Path, precision: str = "int8", *,
                   timeout_s: float = 3600.0) -> Path:
    """Build the ONNX Runtime GenAI model folder `out` (model.onnx + data, genai_config.json, tokenizer) from the
    local Hugging Face folder `folder`, for the CPU, at `precision` ("fp32", "int8" or "int4"; see the module
    docstring for what each is). Returns `out`.

    The builder runs in a child process (it imports torch and transformers and prints progress; a child keeps
    both out of this process) with HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1, so it reads only the folder and
    never the network. It writes into a temporary folder next to `out` that is renamed to `out` when it
    succeeded; an existing `out` is replaced only if it is an earlier build (it holds genai_config.json).
    """
    folder, out = Path(folder), Path(out)
    if precision not in PRECISIONS:
        raise InputError(f"ONNX Runtime GenAI precision {precision!r} is not built for the CPU "
                         f"(known: {', '.join(PRECISIONS)})")
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: not a Hugging Face model folder (no config.json)")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise InputError(f"{folder}: the ONNX Runtime GenAI builder needs the model's tokenizer in the folder "
                         f"({' or '.join(TOKENIZER_FILES)})")
    for module in ("onnxruntime_genai", "onnx_ir"):
        if not available(module):
            require(module, "the ONNX Runtime GenAI builder")  # raises the one-line install hint
    if out.exists() and any(out.iterdir()) and not (out / "genai_config.json").is_file():
        raise InputError(f"{out}: exists and is not an ONNX Runtime GenAI build (no genai_config.json); "
                         f"choose another output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    cache = Path(tempfile.mkdtemp(prefix="edgeopt-genai-cache-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder.resolve()),
           "-o", str(tmp / "model"), "-p", precision, "-e", "cpu", "-c", str(cache)]
    try:
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise InputError(f"{folder}: the ONNX Runtime GenAI builder ran past {timeout_s:.0f} s") from None
        built = tmp / "model"
        if proc.returncode != 0 or not (built / "genai_config.json").is_file():
            reason = (_builder_reason(proc.stdout + "\n" + proc.stderr) if proc.returncode
                      else "it wrote no genai_config.json")
            raise InputError(f"{folder}: the ONNX Runtime GenAI builder failed ({precision}, cpu): {reason}")
        import importlib.metadata as md

        stamp = {"source": str(folder.resolve()), "precision": precision, "execution_provider": "cpu",
                 "onnxruntime_genai": md.version("onnxruntime-genai")}
        (built / STAMP).write_text(json.dumps(stamp, indent=1))
        if out.exists():
            shutil.rmtree(out)
        built.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    return out


def read_genai_config(model_dir: Path) -> dict[str, Any]:
    """genai_config.json of a built folder, or a one-line InputError."""
    path = model_dir / "genai_config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{model_dir}: not an ONNX Runtime GenAI model folder (no genai_config.json)") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read it ({e})") from None


class OrtGenAiLlm:
    """An ONNX Runtime GenAI model folder (from `build_ortgenai` or another builder run) as an LlmSession on the CPU.

    `prefill` rewinds the generator to zero tokens and appends the prompt; `decode` appends one token. `score`
    uses a separate generator sized to the sequence: genai 0.18 returns the logits of every appended position
    through `get_output("logits")` (the builder keeps the full LM head unless `prune_lm_head` was set), so one
    `append_tokens` scores the whole sequence; for a model that returns only the last position, it appends the
    tokens one at a time. `max_cache` is genai_config's search.max_length (the builder sets it to the model's
    context_length), capped by `max_cache=`; the KV buffer of that length is allocated once
    (past_present_share_buffer). `max_prompt` equals `max_cache`. Threads: see the module docstring.
    """

    def __init__(self, model_dir: str | Path, *, threads: int = 2, max_cache: int | None = None,
                 name: str | None = None):
        og = require("onnxruntime_genai", "the ONNX Runtime GenAI session")
        self.model_dir = Path(model_dir)
        if int(threads) < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        cfg = read_genai_config(self.model_dir)
        model_cfg, search = cfg.get("model", {}), cfg.get("search", {})
        limits = [int(v) for v in (search.get("max_length"), model_cfg.get("context_length"), max_cache) if v]
        if not limits or min(limits) < 1:
            raise InputError(f"{self.model_dir}: genai_config.json gives no max_length or context_length")
        self.threads = int(threads)
        self.max_cache = min(limits)
        self.max_prompt = self.max_cache
        self.vocab_size = int(model_cfg.get("vocab_size") or 0)
        precision = None
        if (self.model_dir / STAMP).is_file():
            try:
                precision = json.loads((self.model_dir / STAMP).read_text()).get("precision")
            except ValueError:
                pass
        self.precision = precision
        self.name = name or (f"ortgenai-{precision}" if precision else "ortgenai")
        overlay = {"model": {"decoder": {"session_options": {"intra_op_num_threads": self.threads,
                                                             "inter_op_num_threads": 1}}},
                   "search": {"max_length": self.max_cache}}
        try:
            config = og.Config(str(self.model_dir))
            config.clear_providers()  # the CPU execution provider
            config.overlay(json.dumps(overlay))
            self._og = og
            self._model: Any = og.Model(config)
        except Exception as e:
            raise InputError(f"{self.model_dir}: ONNX Runtime GenAI cannot load it: "
                             f"{(str(e).strip().splitlines() or [''])[0][:200]}") from None
        self._gen: Any = self._generator(self.max_cache)
        self._n = 0
        self._primed = False

    def _generator(self, max_length: int) -> Any:
        params = self._og.GeneratorParams(self._model)
        params.set_search_options(max_length=int(max_length), batch_size=1)
        return self._og.Generator(self._model, params)

    def _check_open(self) -> None:
        if self._model is None:
            raise InputError(f"{self.name}: the session is closed")

    @staticmethod
    def _tokens(ids: Sequence[int]) -> np.ndarray:
        return np.asarray(ids, dtype=np.int32).reshape(-1)

    def _last_logits(self) -> np.ndarray:
        logits = np.array(self._gen.get_logits(), dtype=np.float32, copy=True)  # (1, 1, vocab)
        return logits.reshape(-1, logits.shape[-1])[-1]

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Rewind the generator to zero tokens, append the prompt, return the logits (vocab,) of the token after it."""
        self._check_open()
        check_prompt(self, len(ids))
        if self._n:
            self._gen.rewind_to(0)
        self._n, self._primed = 0, False
        self._gen.append_tokens(self._tokens(ids))
        self._n, self._primed = len(ids), True
        return self._last_logits()

    def decode(self, token: int) -> np.ndarray:
        """Append one token, return the next token's logits (vocab,)."""
        self._check_open()
        if not self._primed:
            raise InputError(f"{self.name}: decode before prefill (no prompt in the cache)")
        if self._n + 1 > self.max_cache:
            raise InputError(f"{self.name}: the KV cache is full ({self.max_cache} tokens)")
        self._gen.append_tokens(self._tokens([int(token)]))
        self._n += 1
        return self._last_logits()

    def score(self, ids: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits (len(ids), vocab) from a generator of its own (the prefill/decode state is kept)."""
        self._check_open()
        check_prompt(self, len(ids))
        gen = self._generator(len(ids))
        gen.append_tokens(self._tokens(ids))
        logits = np.asarray(gen.get_output("logits"), dtype=np.float32)
        logits = logits.reshape(-1, logits.shape[-1])
        if logits.shape[0] == len(ids):
            return logits.copy()
        gen = self._generator(len(ids))  # only the last position came back: one token at a time
        rows = []
        for t in ids:
            gen.append_tokens(self._tokens([int(t)]))
            step = np.array(gen.get_logits(), dtype=np.float32)
            rows.append(step.reshape(-1, step.shape[-1])[-1])
        return np.stack(rows)

    def close(self) -> None:
        self._gen, self._model = None, None

    def __enter__(self) -> OrtGenAiLlm:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
