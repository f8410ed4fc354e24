"""Channel-group discovery: propagate channel slots through the captured graph and couple them.

The pass (:mod:`.propagate`) asks :mod:`.registry` for the handler of every op and leaf module; the
handler families below register themselves when imported, which happens here, once.
"""

from . import (  # noqa: F401  (imported for their handler registrations)
    attention,
    concat_split,
    elementwise,
    indexing,
    layers,
    norms,
    pooling,
    reductions,
    reshape,
    shuffle_pad,
    sizes,
    window_attention,
)
