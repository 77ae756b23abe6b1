"""Two patches to Triton's CPU interpreter for the kernel tests (used only under TRITON_INTERPRET=1): speed, and
a bfloat16 dot.

The interpreter runs a custom ``tl.associative_scan`` one element at a time through Python. The scan's combine
function is elementwise, so running it on whole slices along the scan axis gives the same numbers, and turns
a 10-second kernel test into a fraction of a second. Installed only if the interpreter has the method this
replaces; otherwise the tests run, slower, on the original.

The interpreter also multiplies bfloat16 ``tl.dot`` operands as the raw 16-bit integers it stores them in; the
patched dot widens them to float32 first (exact: a bfloat16 is the top half of a float32).
"""
import numpy as np


def _vectorised_generic_scan(self, input):
    data = [np.moveaxis(arg.handle.data, self.axis, 0) for arg in input]
    out = [np.empty_like(d) for d in data]
    for o, d in zip(out, data):
        o[0] = d[0]
    for i in range(1, data[0].shape[0]):
        acc = [self.to_tensor(o[i - 1], arg.dtype) for o, arg in zip(out, input)]
        cur = [self.to_tensor(d[i], arg.dtype) for d, arg in zip(data, input)]
        ret = self.combine_fn.fn(*acc, *cur)
        for o, r in zip(out, ret if isinstance(ret, tuple) else (ret,)):
            o[i] = np.reshape(r.handle.data, o[i].shape)
    return [self.to_tensor(np.moveaxis(o, 0, self.axis), arg.dtype) for o, arg in zip(out, input)]


def _widened_dot(original):
    import triton.language as tl

    def dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype == tl.bfloat16 and b.dtype == tl.bfloat16:
            a, b = (type(t)((t.data.astype(np.uint32) << 16).view(np.float32), tl.float32) for t in (a, b))
        return original(self, a, b, d, input_precision, max_num_imprecise_acc)
    return dot


def install() -> bool:
    try:
        from triton.runtime.interpreter import InterpreterBuilder, ScanOps
    except ImportError:
        return False
    if hasattr(InterpreterBuilder, 'create_dot'):
        InterpreterBuilder.create_dot = _widened_dot(InterpreterBuilder.create_dot)
    if not hasattr(ScanOps, 'generic_scan'):
        return False
    ScanOps.generic_scan = _vectorised_generic_scan
    return True
