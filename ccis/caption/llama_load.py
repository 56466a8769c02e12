"""Load a GGUF model with llama-cpp-python so that batched decoding works on every x86 CPU.

Why the extra buffer types are turned off on AMX machines
---------------------------------------------------------
``pip install llama-cpp-python`` compiles llama.cpp for the CPU it is built on
(GGML_NATIVE). On a CPU with Intel AMX (Sapphire Rapids and later, which also have
AVX-512) that build contains ggml's AMX matrix-multiply backend, and llama.cpp offers it
as a CPU "extra buffer type": at load, every quantised weight it supports (Q4_0, Q4_1,
Q8_0, Q4_K, Q5_K, Q6_K, IQ4_XS: all of a Q4_K_M file's big matrices) is repacked into an
AMX buffer. A batch of one token then multiplies with the AVX512-VNNI kernel, but any
batch of two or more tokens (the prompt, ``n_ubatch`` > 1) runs the AMX tile kernel
(``ggml_backend_amx_mul_mat``), which loads a tile configuration on each worker thread
and dies with SIGSEGV on the affected builds (upstream llama.cpp #20824 and PR #26954:
an invalid tile configuration, tile data not enabled on worker threads; ollama #17205 for
the same crash in its Sapphire Rapids backend). That is exactly what was seen: ``n_ubatch``
1 works, 2, 4 and 16 crash, and the model parameter ``use_extra_bufts = false`` (weights
in plain CPU buffers, generic kernels) works. Nothing in the model or our code is at
fault, and no build flag should be needed, so the captioner loads every model with
``use_extra_bufts = false`` when the library reports AMX. Other CPUs keep the extra
buffers (the AVX2/AVX-512 repacked weights, which speed up prompt processing).

llama-cpp-python's ``Llama`` has no argument for ``use_extra_bufts``; the model
parameters come from ``llama_model_default_params()`` inside ``Llama.__init__``, so that
function is wrapped for the duration of the load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator

log = logging.getLogger(__name__)

_AMX = re.compile(r"\bAMX_INT8 = 1\b")


def system_info() -> str:
    """llama.cpp's report of the CPU features its backend was built with."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", "replace")


def extra_buffers_safe(info: str) -> bool:
    """Whether weights may go to llama.cpp's extra (AMX / repacked) buffers, given ``info``.

    False when the backend was built with AMX: its tile kernel crashes batched decoding.
    """
    return not _AMX.search(info)


@contextlib.contextmanager
def _model_params(use_extra_bufts: bool) -> Iterator[None]:
    """Make llama-cpp-python load the next model with ``use_extra_bufts`` set as given."""
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def params():
        p = original()
        p.use_extra_bufts = use_extra_bufts
        return p

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = original


def load_llama(
    path: str | os.PathLike,
    *,
    n_ctx: int,
    threads: int | None = None,
    seed: int = 0,
    chat_handler=None,
    n_batch: int = 512,
):
    """A ``llama_cpp.Llama`` for the GGUF at ``path``, safe for batched decoding."""
    # llama.cpp's CPU threads meet at an OpenMP barrier after every operation, and
    # libgomp's default is to spin there. When the cores are shared (caption shards run
    # side by side, other jobs run), a spinning thread holds the core its partner needs:
    # two threads then took 10.4 s a caption against 2.4 s with passive waiting (and 2.2 s
    # with one thread) on this project's 2-core machine. libgomp reads the setting when
    # llama.cpp's library is loaded, so it is set before the first import; a value the
    # user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from llama_cpp import Llama

    safe = extra_buffers_safe(system_info())
    if not safe:
        log.info("llama.cpp was built with AMX: loading weights without extra buffers")
    with _model_params(safe):
        llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_batch,
            seed=seed,
            n_threads=threads,
            n_threads_batch=threads,
            chat_handler=chat_handler,
            verbose=False,
        )
    return llm
