"""Bundle an exported LLM as a `.litertlm` file and generate with the LiteRT-LM engine (litert-lm-api).

The LiteRT-LM engine (the Linux counterpart of the MediaPipe LLM Inference API) runs a `.litertlm` bundle: the
multi-signature .tflite, the Hugging Face tokenizer and the LLM metadata (start and stop tokens, context length).
It drives prefill/decode, sampling and stop tokens itself, in C++, and returns text only (no logits), so fidelity
is measured on the same .tflite through `LiteRtLlm` (edgeopt.llm.litert_session), whose `prefill_<N>` /
`decode` signatures the engine runs.

What it needs from the export (probed with litert-lm-api 0.18.1): the transposed KV cache layout
(`convert.litert_llm kv_layout: transposed`, the default), because the engine reads the context length from
axis 2 of the K cache (with the default layout that axis is the KV heads, and a prompt of more than 3 tokens is
refused). The mask as an input is not needed. Bundling is litert-torch's own `build_litertlm` (what
`convert_to_litert(output_format="litertlm")` calls); the engine is litert-lm-api's `Engine`. Two differences
from `edgeopt generate` on LiteRT: the engine starts every prompt with the start token (BOS) even for a raw
prompt, and chat prompts are templated here with the tokenizer's own chat template (the engine's Jinja runtime
refuses SmolLM2's template).
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, Iterator, Sequence

from edgeopt.errors import InputError, first_line
from edgeopt.extras import require
from edgeopt.llm.export import read_sidecar
from edgeopt.llm.generate import GenerationStats, Sampling, load_tokenizer, stop_ids, use_chat_template
from edgeopt.llm.litert_session import find_tflite
from edgeopt.measure.litert import quiet_native_stderr

SUFFIX = ".litertlm"


def bundle(model: str | Path, out: str | Path | None = None) -> Path:
    """Bundle the exported LLM `model` (a stage folder or its .tflite, with llm.json and the tokenizer beside it)
    into `out` (default: `model.litertlm` beside the .tflite), written atomically. One-line errors for a
    default-layout export, a missing tokenizer.json, or a tokenizer without a start token."""
    tfl = find_tflite(model)
    facts = read_sidecar(tfl)
    if facts.get("kv_layout", "default") != "transposed":
        raise InputError(f"{tfl}: the LiteRT-LM engine reads the KV cache in the transposed layout; re-export with "
                         "convert.litert_llm kv_layout: transposed")
    folder = tfl.parent
    tok_json = folder / "tokenizer.json"
    if not tok_json.is_file():
        raise InputError(f"{folder}: no tokenizer.json beside the model (the bundle embeds the Hugging Face tokenizer)")
    tokenizer = load_tokenizer(folder)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise InputError(f"{folder}: the tokenizer has no start (BOS) token, which a .litertlm bundle needs")
    stops = sorted(stop_ids(tokenizer, folder))
    out = Path(out) if out is not None else folder / f"{tfl.stem}{SUFFIX}"
    if out.suffix != SUFFIX:
        raise InputError(f"{out}: a LiteRT-LM bundle's name ends in {SUFFIX}")
    require("litert_lm_builder", "bundling a .litertlm file")
    from litert_torch.generative.utilities import litertlm_builder  # lazy: optional extra, slow to import

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".litertlm-") as tmp:
        try:
            with redirect_stdout(io.StringIO()), quiet_native_stderr():
                litertlm_builder.build_litertlm(
                    tflite_model_path=str(tfl), workdir=tmp, output_path=tmp,
                    context_length=int(facts["kv_cache_max_len"]), hf_tokenizer_model_path=str(tok_json),
                    start_token_id=int(bos), stop_token_ids=stops, llm_model_type="generic")
        except Exception as e:
            raise InputError(f"{tfl}: cannot build the .litertlm bundle: {first_line(e, 200)}") from None
        built = Path(tmp) / f"{tfl.stem}{SUFFIX}"
        if not built.is_file():
            raise InputError(f"{tfl}: the LiteRT-LM builder wrote no {built.name}")
        os.replace(built, out)
    return out


class LiteRtLmEngine:
    """A `.litertlm` bundle on the LiteRT-LM engine's CPU backend with `threads` threads. `activations`: "float32"
    (the default: the same arithmetic as the .tflite on LiteRT, so its fidelity holds) or "float16" (the
    engine's own CPU default)."""

    name = "litert-lm"

    def __init__(self, path: str | Path, threads: int = 2, activations: str = "float32"):
        self.path = Path(path)
        if self.path.is_dir():
            found = sorted(self.path.glob(f"*{SUFFIX}"))
            if len(found) != 1:
                raise InputError(f"{self.path}: expected one {SUFFIX} file in the folder, found {len(found)}")
            self.path = found[0]
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such file")
        if activations not in ("float32", "float16"):
            raise InputError(f"activations must be float32 or float16, got {activations!r}")
        if int(threads) < 1:
            raise InputError(f"{self.path}: threads must be >= 1, got {threads}")
        lm = self._lm = require("litert_lm", "the LiteRT-LM engine")
        side = self.path.parent / "llm.json"
        self.max_cache = read_sidecar(self.path)["kv_cache_max_len"] if side.is_file() else None
        self.threads = int(threads)
        self.label = f"LiteRT-LM engine · CPU · {self.threads} thread{'s' if self.threads > 1 else ''} · {activations}"
        act = lm.ActivationDataType.FLOAT32 if activations == "float32" else lm.ActivationDataType.FLOAT16
        try:
            lm.set_min_log_severity(lm.LogSeverity.ERROR)
            with quiet_native_stderr():
                self._engine = lm.Engine(str(self.path), backend=lm.Backend.CPU(thread_count=self.threads),
                                         max_num_tokens=self.max_cache, activation_data_type=act)
        except Exception as e:
            raise InputError(f"{self.path}: the LiteRT-LM engine cannot load it ({first_line(e, 200)})") from None

    def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self._engine.tokenize(text)]

    def session(self, max_new_tokens: int, sampling: Sampling) -> Any:
        lm = self._lm
        if sampling.temperature == 0:
            cfg = lm.SamplerConfig(top_k=1, temperature=0.0)
        else:
            cfg = lm.SamplerConfig(top_k=sampling.top_k or None, top_p=sampling.top_p,
                                   temperature=sampling.temperature, seed=sampling.seed)
        return self._engine.create_session(apply_prompt_template=False, sampler_config=cfg,
                                           max_output_tokens=int(max_new_tokens))

    def close(self) -> None:
        eng = getattr(self, "_engine", None)
        self._engine = None
        if eng is not None:
            with quiet_native_stderr():
                eng.close()


class LiteRtLmGenerator:
    """`Generator`'s interface (stream / generate / stats / session) on the LiteRT-LM engine: text pieces as the
    engine streams them, TTFT from the prefill call to the first piece, one decode time per later piece."""

    def __init__(self, path: str | Path, threads: int = 2, activations: str = "float32"):
        self.session = LiteRtLmEngine(path, threads, activations)
        folder = self.session.path.parent
        # the bundle holds the tokenizer the engine uses; the Hugging Face one beside it (an exported stage folder)
        # adds the chat template, which a bundle copied elsewhere goes without
        self.tokenizer = (load_tokenizer(folder) if any((folder / n).is_file() for n in ("tokenizer.json",
                          "tokenizer.model")) else None)
        self.stats = GenerationStats()

    def prompt_text(self, prompt: str, chat: bool | None = None) -> str:
        """The text the engine gets: the chat template's (without its leading start token, which the engine adds)
        when the tokenizer has one and `chat` is not False, else `prompt`."""
        tok = self.tokenizer
        if not use_chat_template(tok, chat):
            return prompt
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=False)
        bos = getattr(tok, "bos_token", None)
        return text[len(bos):] if bos and text.startswith(bos) else text

    def stream(self, prompt: str, *, max_new_tokens: int = 64, sampling: Sampling = Sampling(),
               chat: bool | None = None, stop: Sequence[str] = ()) -> Iterator[str]:
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        text = self.prompt_text(prompt, chat)
        n_prompt = len(self.session.tokenize(text)) + 1  # the engine adds the start token
        cache = self.session.max_cache
        if cache is not None and n_prompt >= cache:
            raise InputError(f"the prompt ({n_prompt} tokens) does not fit the KV cache ({cache} tokens)")
        self.stats = st = GenerationStats(prompt_tokens=n_prompt)
        sess = self.session.session(max_new_tokens, sampling)
        sent, chunks, done = "", None, False
        try:
            t0 = time.perf_counter()
            try:
                sess.run_prefill([text])
                chunks = sess.run_decode_async()
                last = None
                for resp in chunks:  # one chunk per token that adds text (the engine skips empty ones)
                    now = time.perf_counter()
                    if last is None:
                        st.ttft_ms = (now - t0) * 1000
                    else:
                        st.decode_ms.append((now - last) * 1000)
                    last = now
                    st.new_tokens += 1
                    piece = "".join(resp.texts) if getattr(resp, "texts", None) else ""
                    full = sent + piece
                    hit = min((full.find(s) for s in stop if s and s in full), default=-1)
                    if hit >= 0:
                        tail = full[len(sent):hit]  # the new text up to the stop string
                        if tail:
                            yield tail
                        st.stopped = "stop string"
                        return
                    sent += piece
                    if piece:
                        yield piece
                done = True
            except InputError:
                raise
            except Exception as e:
                raise InputError(f"{self.session.path}: the LiteRT-LM engine failed: {first_line(e, 200)}") from None
            st.stopped = "max tokens" if st.new_tokens >= max_new_tokens else "eos"
        finally:
            if chunks is not None and not done:  # stopped early (stop string, or the caller stopped reading):
                sess.cancel_process()             # cancel the engine's decode and let its stream end before closing
                try:
                    for _ in chunks:
                        pass
                except Exception:  # the cancelled stream's own error
                    pass
            sess.close()

    def generate(self, prompt: str, **kw: Any) -> Any:
        from edgeopt.llm.generate import Generation

        pieces = list(self.stream(prompt, **kw))
        return Generation(text="".join(pieces), tokens=[], stats=self.stats)
