"""Writes tiny PyTorch checkpoints, zip and legacy format, without PyTorch.

tests/checkpoint.rs reads them. PyTorch is not needed: a state dict pickle is an
OrderedDict of `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
calls whose storages are persistent ids, so stand-in modules named `torch` and
`torch._utils` make Python's own pickle write the same opcodes torch.save does
(protocol 2). Run from the repository root: python3 tests/data/checkpoint/make.py
"""

import collections
import io
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
torch._utils = utils


def _rebuild_tensor_v2(*args):
    raise RuntimeError("never called: only pickled")


def _rebuild_parameter(*args):
    raise RuntimeError("never called: only pickled")


_rebuild_tensor_v2.__module__ = _rebuild_parameter.__module__ = "torch._utils"
utils._rebuild_tensor_v2, utils._rebuild_parameter = _rebuild_tensor_v2, _rebuild_parameter


class FloatStorage:
    pass


class LongStorage:
    pass


for cls in (FloatStorage, LongStorage):
    cls.__module__ = "torch"
    setattr(torch, cls.__name__, cls)


class Storage:
    """A storage: its type, key, element format and values."""

    def __init__(self, kind, key, fmt, values):
        self.kind, self.key, self.fmt, self.values = kind, key, fmt, values

    def raw(self):
        return struct.pack("<%d%s" % (len(self.values), self.fmt), *self.values)


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (_rebuild_tensor_v2, self.args)


class Parameter:
    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce__(self):
        return (_rebuild_parameter, (self.tensor, True, collections.OrderedDict()))


# Storage "0" holds 0..11 as float32; the tensors view it in three ways.
weights = Storage(FloatStorage, "0", "f", [float(i) for i in range(12)])
batches = Storage(LongStorage, "1", "q", [7])
state = collections.OrderedDict()
state["layer.weight"] = Parameter(Tensor(weights, 0, (3, 4), (4, 1)))
state["layer.weight_t"] = Tensor(weights, 0, (4, 3), (1, 4))
state["layer.window"] = Tensor(weights, 5, (2, 2), (4, 1))
state["bn.num_batches_tracked"] = Tensor(batches, 0, (), ())
state._metadata = collections.OrderedDict([("", {"version": 1})])
storages = {s.key: s for s in (weights, batches)}


def state_pickle():
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=2)
    pickler.persistent_id = lambda o: (
        ("storage", o.kind, o.key, "cpu", len(o.values)) if isinstance(o, Storage) else None
    )
    pickler.dump(state)
    return out.getvalue()


here = Path(__file__).parent


def put(archive, name, data):
    """Adds an entry with a fixed date, so that running this again changes nothing."""
    archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)


with zipfile.ZipFile(here / "tiny-zip.pth", "w", zipfile.ZIP_STORED) as z:
    put(z, "tiny/data.pkl", state_pickle())
    put(z, "tiny/byteorder", "little")
    for key, storage in storages.items():
        put(z, "tiny/data/" + key, storage.raw())
    put(z, "tiny/version", "3\n")

legacy = io.BytesIO()
pickle.dump(0x1950A86A20F9469CFC6C, legacy, protocol=2)
pickle.dump(1001, legacy, protocol=2)
pickle.dump(
    {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
    legacy,
    protocol=2,
)
legacy.write(state_pickle())
pickle.dump(sorted(storages), legacy, protocol=2)
for key in sorted(storages):
    legacy.write(struct.pack("<q", len(storages[key].values)))
    legacy.write(storages[key].raw())
(here / "tiny-legacy.pth").write_bytes(legacy.getvalue())

# A zip checkpoint whose data.pkl calls os.system("touch pwned"): must be refused unread.
with zipfile.ZipFile(here / "malicious-zip.pth", "w", zipfile.ZIP_STORED) as z:
    put(z, "evil/data.pkl", b"\x80\x02cos\nsystem\nX\x0b\x00\x00\x00touch pwned\x85R.")
    put(z, "evil/version", "3\n")
