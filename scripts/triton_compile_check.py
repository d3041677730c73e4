"""Compile the Triton kernels for sm_90 (H100 / H200) without a GPU: Triton's frontend and ptxas see the real code
paths the CPU interpreter does not (loop-carried types, atomics, constexpr ``None`` pointers); prints each
variant's registers and stack (spills) from ``cuobjdump -res-usage``.  Exit status 1 if one fails to compile.

    PYTHONPATH=src python scripts/triton_compile_check.py
"""

import os
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from polyfocal.kernels import _triton_impl as T

target = GPUTarget("cuda", 90, 32)


def compile_kernel(fn, sig, consts, num_warps=4):
    src = ASTSource(fn=fn, signature=sig, constexprs=consts)
    k = triton.compile(src, target=target, options={"num_warps": num_warps})
    return k


def softmax(
    dt_x="fp32",
    dt="fp32",
    HAS_A=False,
    HAS_W=False,
    HAS_NORM=False,
    N_EPS=1,
    GAMMA_ZERO=False,
    SMOOTH=False,
    COMPUTE_GRAD=True,
    REDUCE=2,
    DEN_DEVICE=True,
    SINGLE=True,
    BLOCK_R=4,
    BLOCK_C=1024,
    HAS_BIAS=False,
    HAS_MARGIN=False,
    HAS_SCALE=False,
    HAS_Z=False,
    SOFTCAP=False,
    warps=4,
    none_ptrs=True,
):
    fn = T._softmax_poly_kernel
    ws_bits = "*i64" if dt == "fp64" else "*i32"
    sig = {
        "x_ptr": f"*{dt_x}",
        "y_ptr": "*i64",
        "a_ptr": f"*{dt}" if HAS_A else "constexpr",
        "w_ptr": f"*{dt}" if HAS_W else "constexpr",
        "norm_ptr": f"*{dt}" if HAS_NORM else "constexpr",
        "consts_ptr": f"*{dt}",
        "loss_ptr": f"*{dt}",
        "g_ptr": f"*{dt_x}" if COMPUTE_GRAD else "constexpr",
        "ws_ptr": "*i32" if REDUCE else "constexpr",
        "wsb_ptr": ws_bits if REDUCE else "constexpr",
        "R": "i32",
        "C": "i32",
        "S": "i32",
        "ignore_index": "i64",
        "den_host": "i64",
        "bias_ptr": f"*{dt}" if HAS_BIAS else "constexpr",
        "margin_ptr": f"*{dt}" if HAS_MARGIN else "constexpr",
        "softcap": "fp32",
    }
    consts = {}
    for k in ("a_ptr", "w_ptr", "norm_ptr", "g_ptr", "ws_ptr", "wsb_ptr", "bias_ptr", "margin_ptr"):
        if sig[k] == "constexpr":
            consts[k] = None
    DT = tl.float64 if dt == "fp64" else tl.float32
    cx = dict(
        HAS_A=HAS_A,
        HAS_W=HAS_W,
        HAS_NORM=HAS_NORM,
        N_EPS=N_EPS,
        GAMMA_ZERO=GAMMA_ZERO,
        SMOOTH=SMOOTH,
        COMPUTE_GRAD=COMPUTE_GRAD,
        REDUCE=REDUCE,
        DEN_DEVICE=DEN_DEVICE,
        DT=DT,
        SINGLE=SINGLE,
        BLOCK_R=BLOCK_R,
        BLOCK_C=BLOCK_C,
        BLOCK_P=2048,
        HAS_BIAS=HAS_BIAS,
        HAS_MARGIN=HAS_MARGIN,
        HAS_SCALE=HAS_SCALE,
        HAS_Z=HAS_Z,
        SOFTCAP=SOFTCAP,
    )
    for k, v in cx.items():
        sig[k] = "constexpr"
        consts[k] = v
    return compile_kernel(fn, sig, consts, warps)


def sigmoid(
    detection=False,
    dt_x="fp32",
    dt="fp32",
    IS_INDEX=False,
    REDUCE=2,
    DEN_DEVICE=False,
    COMPUTE_GRAD=True,
    VARIANT=1,
    warps=8,
    BLOCK=2048,
):
    fn = T._sigmoid_detection_kernel if detection else T._sigmoid_poly_kernel
    ws_bits = "*i64" if dt == "fp64" else "*i32"
    sig = {"x_ptr": f"*{dt_x}", "t_ptr": "*i64" if IS_INDEX else f"*{dt_x}"}
    consts = {}
    if detection:
        sig["score_ptr"] = "constexpr"
        consts["score_ptr"] = None
    for k in ("w_ptr", "pw_ptr", "norm_ptr"):
        sig[k] = "constexpr"
        consts[k] = None
    sig.update(
        {
            "consts_ptr": f"*{dt}",
            "loss_ptr": f"*{dt}",
            "g_ptr": f"*{dt_x}",
            "ws_ptr": "*i32" if REDUCE else "constexpr",
            "wsb_ptr": ws_bits if REDUCE else "constexpr",
            "numel": "i64",
            "C": "i32",
            "S": "i32",
            "ignore_index": "i64",
            "den_host": "i64",
        }
    )
    if not REDUCE:
        consts["ws_ptr"] = None
        consts["wsb_ptr"] = None
    for k in ("w_s0", "w_s1", "w_s2", "pw_s0", "pw_s1", "pw_s2", "n_s0", "n_s1", "n_s2"):
        sig[k] = "i32"
    DT = tl.float64 if dt == "fp64" else tl.float32
    cx = dict(
        IS_INDEX=IS_INDEX,
        HAS_ALPHA=True,
        HAS_W=False,
        HAS_PW=False,
        HAS_NORM=False,
        N_EPS=1,
        REDUCE=REDUCE,
        DEN_DEVICE=DEN_DEVICE,
        COMPUTE_GRAD=COMPUTE_GRAD,
        SMOOTH=False,
        DT=DT,
        BLOCK=BLOCK,
        BLOCK_P=8192,
    )
    if detection:
        cx.update(VARIANT=VARIANT, IOU_WEIGHTED=True, HAS_SCORE=False, HAS_CLIP=True)
    else:
        cx.update(GAMMA_ZERO=False)
    for k, v in cx.items():
        sig[k] = "constexpr"
        consts[k] = v
    # keep the signature in the function's argument order
    sig = {k: sig[k] for k in fn.arg_names}
    return compile_kernel(fn, sig, consts, warps)


def two_phase(grad=False, dt_x="fp32", dt="fp32", HAS_BIAS=True, HAS_MARGIN=True, HAS_A=True, LS=True, BLOCK_R=4,
              BLOCK_C=1024, warps=4):  # fmt: skip
    """linear_parallel's two-phase kernels (phase 1: statistics; phase 2: the gradient from given statistics)."""
    fn = T._lp_grad_kernel if grad else T._lp_stats_kernel
    sig = {"z_ptr": f"*{dt_x}", "t_ptr": "*i64", "R": "i32", "V": "i32"}
    for k in ("b_ptr", "m_ptr", "a_ptr", "s_ptr", "st_ptr", "lse_ptr", "co_ptr", "k1_ptr", "k2_ptr"):
        sig[k] = f"*{dt}"
    cx = dict(HAS_BIAS=HAS_BIAS, HAS_MARGIN=HAS_MARGIN, HAS_A=HAS_A, LS=LS, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)
    consts = {}
    for k, v in cx.items():
        sig[k] = "constexpr"
        consts[k] = v
    sig = {k: sig[k] for k in fn.arg_names}
    consts = {k: v for k, v in consts.items() if k in sig}
    return compile_kernel(fn, sig, consts, warps)


cases = [
    ("two-phase stats fp32 all options", lambda: two_phase()),
    (
        "two-phase stats bf16 plain",
        lambda: two_phase(dt_x="bf16", HAS_BIAS=False, HAS_MARGIN=False, HAS_A=False, LS=False),
    ),
    ("two-phase stats fp64", lambda: two_phase(dt_x="fp64", dt="fp64", BLOCK_C=256)),
    ("two-phase grad fp32 all options", lambda: two_phase(grad=True)),
    (
        "two-phase grad bf16 plain",
        lambda: two_phase(grad=True, dt_x="bf16", HAS_BIAS=False, HAS_MARGIN=False, HAS_A=False),
    ),
    ("two-phase grad fp64", lambda: two_phase(grad=True, dt_x="fp64", dt="fp64")),
    ("softmax ce mean den-device fp32", lambda: softmax(N_EPS=0, GAMMA_ZERO=True)),
    (
        "softmax bf16 chunked smooth weights",
        lambda: softmax(
            dt_x="bf16", SINGLE=False, BLOCK_R=1, BLOCK_C=4096, SMOOTH=True, HAS_A=True, HAS_W=True, warps=16
        ),
    ),
    (
        "softmax bf16 chunked softcap longtail",
        lambda: softmax(
            dt_x="bf16", SINGLE=False, BLOCK_R=1, BLOCK_C=4096, HAS_BIAS=True, HAS_SCALE=True, SOFTCAP=True, warps=16
        ),
    ),
    (
        "softmax fp32 softcap",
        lambda: softmax(SOFTCAP=True, HAS_Z=True),
    ),
    (
        "softmax fp64 sum longtail",
        lambda: softmax(
            dt_x="fp64",
            dt="fp64",
            REDUCE=1,
            DEN_DEVICE=False,
            HAS_BIAS=True,
            HAS_MARGIN=True,
            HAS_SCALE=True,
            HAS_Z=True,
        ),
    ),
    ("softmax none nograd", lambda: softmax(REDUCE=0, DEN_DEVICE=False, COMPUTE_GRAD=False, HAS_NORM=True)),
    ("softmax 8192 single 16 warps", lambda: softmax(BLOCK_R=1, BLOCK_C=8192, warps=16)),
    ("sigmoid dense mean", lambda: sigmoid()),
    ("sigmoid index den-device bf16", lambda: sigmoid(dt_x="bf16", IS_INDEX=True, DEN_DEVICE=True)),
    ("sigmoid none", lambda: sigmoid(REDUCE=0)),
    ("detection asl", lambda: sigmoid(detection=True)),
    ("detection vfl index", lambda: sigmoid(detection=True, VARIANT=2, IS_INDEX=True, DEN_DEVICE=True)),
]


def resources(kernel) -> str:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return "?"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(kernel.asm["cubin"])
        fh.flush()
        out = subprocess.run([tool, "-res-usage", fh.name], capture_output=True, text=True).stdout
    line = next((x for x in out.splitlines() if "REG:" in x), "")
    return " ".join(line.split()[:2])


def main() -> int:
    failed = 0
    for name, build in cases:
        try:
            print(f"ok    {name}: {resources(build())}", flush=True)
        except Exception as e:  # report every variant
            failed += 1
            print(f"FAIL  {name}: {type(e).__name__}: {str(e)[:2000]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
