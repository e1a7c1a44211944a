"""Channel rules for the Ultralytics modules found in detection models (v3/v5u/v8/11/12/26 and our YOLOv7 configs).

Each rule replays the module's `forward` on labels (see trace.py). Modules without a rule are barriers.
"""

from torch import nn
from ultralytics.nn.modules import (
    C2PSA,
    C3,
    DFL,
    SPPF,
    Bottleneck,
    C2f,
    C3k2,
    Concat,
    Conv,
    Detect,
    DWConv,
    RepConv,
)
from ultralytics.nn.modules.block import C3k, PSABlock

from .trace import Tracer, channel_rule


@channel_rule(Conv, DWConv)
def _conv(t: Tracer, m, x):
    return t.conv(m, x)


@channel_rule(nn.Conv2d)
def _bare_conv(t: Tracer, m, x):
    return t.conv(m, x, fixed_out=True)


@channel_rule(nn.Sequential)
def _sequential(t: Tracer, m, x):
    return t.sequential(m, x)


@channel_rule(nn.Upsample, nn.MaxPool2d, nn.Identity, nn.Dropout)
def _passthrough(t: Tracer, m, x):
    return x


@channel_rule(Concat)
def _concat(t: Tracer, m, xs):
    if m.d != 1:
        return t.barrier(m, xs)
    return t.cat(xs)


@channel_rule(Bottleneck)
def _bottleneck(t: Tracer, m, x):
    y = t.conv(m.cv2, t.conv(m.cv1, x))
    return t.add(x, y) if m.add else y


@channel_rule(C2f, C3k2)
def _c2f(t: Tracer, m, x):
    y = t.chunk(t.conv(m.cv1, x), 2)
    for block in m.m:
        y.append(t.run(block, y[-1]))
    return t.conv(m.cv2, t.cat(y))


@channel_rule(C3, C3k)
def _c3(t: Tracer, m, x):
    a = t.run(m.m, t.conv(m.cv1, x))
    return t.conv(m.cv3, t.cat([a, t.conv(m.cv2, x)]))


@channel_rule(SPPF)
def _sppf(t: Tracer, m, x):
    y = t.conv(m.cv1, x)
    # the pooled copies carry the same labels: one channel of cv1 feeds n+1 input channels of cv2
    out = t.conv(m.cv2, t.cat([y] * (getattr(m, "n", 3) + 1)))
    return t.add(out, x) if getattr(m, "add", False) else out


@channel_rule(C2PSA)
def _c2psa(t: Tracer, m, x):
    a, b = t.chunk(t.conv(m.cv1, x), 2)
    return t.conv(m.cv2, t.cat([a, t.run(m.m, b)]))


@channel_rule(PSABlock)
def _psablock(t: Tracer, m, x):
    # attention (qkv heads, positional conv) is a barrier; the feed-forward hidden layer is prunable
    a = t.run(m.attn, x)
    x = t.add(x, a) if m.add else a
    f = t.run(m.ffn, x)
    return t.add(x, f) if m.add else f


@channel_rule(RepConv)
def _repconv(t: Tracer, m, x):
    if m.bn is not None:  # identity branch: a BN on the input itself; keep it simple and whole
        return t.barrier(m, x)
    return t.add(t.conv(m.conv1, x), t.conv(m.conv2, x))


@channel_rule(Detect)
def _detect(t: Tracer, m, xs):
    # box (cv2) and class (cv3) towers are prunable; their last 1x1 convs keep their outputs (4*reg_max, nc)
    names = ("cv2", "cv3", "one2one_cv2", "one2one_cv3")  # one2one: the end-to-end (NMS-free) copies of yolo26
    for towers in filter(None, (getattr(m, n, None) for n in names)):
        for tower, x in zip(towers, xs):
            t.run(tower, x)
    return None


@channel_rule(DFL)
def _dfl(t: Tracer, m, x):
    return None


# --- yolo-prune modules ---
from ..nn.modules import SPPCSPC  # noqa: E402  (our YOLOv7 block)


@channel_rule(SPPCSPC)
def _sppcspc(t: Tracer, m, x):
    x1 = t.conv(m.cv4, t.conv(m.cv3, t.conv(m.cv1, x)))
    # the pooled copies carry x1's labels: one channel of cv4 feeds len(m.m) + 1 input channels of cv5
    y1 = t.conv(m.cv6, t.conv(m.cv5, t.cat([x1] + [t.run(p, x1) for p in m.m])))
    return t.conv(m.cv7, t.cat([y1, t.conv(m.cv2, x)]))


# --- anchor heads ---
from ..nn.anchor import AnchorDetect, IDetect, ImplicitM  # noqa: E402  (YOLOv5 Detect, YOLOv7 IDetect)


@channel_rule(AnchorDetect, IDetect)
def _anchor_detect(t: Tracer, m, xs):
    # each level's bare 1x1 conv keeps its na*(5+nc) outputs; its input channels prune with the layer feeding it. An
    # IDetect's ImplicitA shifts those input channels (sliced with them, its removed constants folded into the conv
    # bias: see anchor.implicit_a_feeds); its ImplicitM scales the fixed outputs and is never cut
    for conv, x in zip(m.m, xs):
        t.conv(conv, x, fixed_out=True)
    return None


# ImplicitA has no rule on purpose: it adds a constant, so a channel masked to zero before it is no longer zero after;
# outside IDetect (whose rule above accounts for it) it stays a barrier.
@channel_rule(ImplicitM)
def _implicit_m(t: Tracer, m, x):
    return x  # a per-channel gain: zero stays zero, channels stay apart
