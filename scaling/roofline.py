"""A compiled step's time at the roofline, read from XLA's optimized HLO: where its FLOPs and bytes go
on a device this host may not have (a compile-only one, scaling/hardware.py).

Each instruction the device runs (a fusion, a library matmul, cuDNN attention, a copy) is charged
max(FLOPs / matmul rate, bytes / memory bandwidth): its FLOPs are those of the dots it holds (cuBLAS
and cuDNN calls, dots and fusions of dots), its bytes the operands it reads and the result it writes,
where a dynamic slice of an operand reads only the slice and a dynamic update writes only the update
(both in place). A loop body counts as often as its known trip count says (a scan over layers). It
is an estimate of the step's floor and of its shares, not a measurement: kernels below their
roofline, launch gaps and overlap are not in it.
"""
import collections
import dataclasses
import math
import re

BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8,
         "s64": 8, "u64": 8}
ARRAY = re.compile(r"\b(" + "|".join(BYTES) + r")\[([\d,]*)\]")
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$")
COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\{$")
FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all", "partition-id", "replica-id"}


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    type: str  # the result's type, e.g. 'bf16[64,1024]{1,0}' or a tuple of them
    op: str
    rest: str  # operands and attributes

    @property
    def operands(self) -> list[str]:
        return re.findall(r"%([\w.\-]+)", self.rest.split(")", 1)[0])

    def attribute(self, name: str) -> str | None:
        found = re.search(name + r"=%?([\w.\-]+)", self.rest)
        return found.group(1) if found else None


@dataclasses.dataclass
class Estimate:
    seconds: collections.Counter  # by group: matmuls, cuDNN attention, else an instruction's name less its number
    flops: float
    bytes: float

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())


def array_bytes(type_text: str) -> int:
    """Bytes of every array in a type (a tuple's elements summed)."""
    return sum(BYTES[dtype] * math.prod(int(d) for d in shape.split(",") if d)
               for dtype, shape in ARRAY.findall(type_text))


def dims(type_text: str) -> list[int]:
    """The first array's dimensions."""
    return [int(d) for d in ARRAY.search(type_text).group(2).split(",") if d]


def parse(hlo: str) -> tuple[dict[str, list[Instruction]], str]:
    """({computation: its instructions}, the entry computation's name) of an HLO module's text."""
    computations, entry, current = {}, None, None
    for line in hlo.splitlines():
        if opened := COMPUTATION.match(line):
            current = computations.setdefault(opened.group(2), [])
            entry = opened.group(2) if opened.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current is not None and (found := INSTRUCTION.match(line)):
            current.append(Instruction(*found.groups()))
    return computations, entry


class _Module:
    def __init__(self, hlo: str, matmul_flops_per_s: float = 1.0, bytes_per_s: float = 1.0):
        self.computations, self.entry = parse(hlo)
        self.types = {i.name: i.type for body in self.computations.values() for i in body}
        self.matmul_flops_per_s, self.bytes_per_s = matmul_flops_per_s, bytes_per_s

    def dot_flops(self, instruction: Instruction) -> float:
        """2 x |result| x contracted size of a dot, a cuBLAS call (its backend config names the
        contracted dimensions) or the dots inside a fusion."""
        if instruction.op == "fusion":
            return sum(self.dot_flops(i) for i in self.computations.get(instruction.attribute("calls"), []))
        found = re.search(r"lhs_contracting_dim(?:s=\{|ensions\":\[)([\d,\"]*)", instruction.rest)
        if instruction.op not in ("dot", "custom-call") or not found or "cudnn" in instruction.rest:
            return 0.0
        lhs = dims(self.types[instruction.operands[0]])
        contracted = math.prod(lhs[int(d)] for d in found.group(1).replace('"', "").split(",") if d)
        return 2.0 * math.prod(dims(instruction.type)) * contracted

    def attention_flops(self, instruction: Instruction) -> float:
        """cuDNN's causal flash attention: 4 b h t^2 d / 2 forward, 2.5 times that backward."""
        if "__cudnn$fmha" not in instruction.rest:
            return 0.0
        batch, length, heads, head_dim = dims(self.types[instruction.operands[0]])
        forward = 2 * batch * heads * length * length * head_dim
        return forward * (2.5 if "Backward" in instruction.rest else 1.0)

    def bytes_moved(self, instruction: Instruction) -> float:
        """Operands read plus result written; dynamic slices and updates in place count their slice."""
        body = self.computations.get(instruction.attribute("calls"), []) if instruction.op == "fusion" else []
        written = sum(array_bytes(self.types.get(i.operands[1], "")) for i in body if i.op == "dynamic-update-slice")
        if instruction.op == "dynamic-update-slice":
            written = array_bytes(self.types[instruction.operands[1]])
        result = re.sub(r", s8\[\d+\]\{0\}", "", instruction.type)  # a library call's scratch space
        read = sum(self._read(body, index, self.types.get(name, "")) for index, name in enumerate(instruction.operands))
        if instruction.op == "dynamic-slice":
            read = array_bytes(instruction.type)
        return read + (written or array_bytes(result))

    @staticmethod
    def _read(body: list[Instruction], index: int, full: str) -> float:
        """Bytes a fusion reads of its operand `index`: all of it, or only the slices its body takes (of it
        or of a bitcast of it)."""
        parameter = next((i.name for i in body if i.op == "parameter" and i.rest.startswith(f"{index})")), None)
        views = {parameter}
        for i in body:  # operands come before their users
            if i.op == "bitcast" and i.operands[0] in views:
                views.add(i.name)
        users = [i for i in body if views.intersection(i.operands) and i.name not in views]
        if not users or any(i.op not in ("dynamic-slice", "slice", "dynamic-update-slice") or i.operands[0] not in views
                            for i in users):
            return array_bytes(full)
        return min(array_bytes(full), sum(array_bytes(i.type) for i in users if i.op != "dynamic-update-slice"))

    def walk(self, name: str, times: int, estimate: Estimate):
        for instruction in self.computations[name]:
            if instruction.op in FREE:
                continue
            if instruction.op == "while":
                trips = re.search(r'known_trip_count":\{"n":"(\d+)"', instruction.rest)
                self.walk(instruction.attribute("body"), times * (int(trips.group(1)) if trips else 1), estimate)
                continue
            if instruction.op in ("call", "conditional"):
                for called in re.findall(r"(?:to_apply|branch_computations)=\{?%([\w.\-]+)", instruction.rest):
                    self.walk(called, times, estimate)
                continue
            matmul, attention = self.dot_flops(instruction), self.attention_flops(instruction)
            flops, moved = matmul + attention, self.bytes_moved(instruction)
            group = ("matmuls" if matmul else "attention (cuDNN)" if attention
                     else re.sub(r"[.\d]+$", "", instruction.name))
            estimate.seconds[group] += times * max(flops / self.matmul_flops_per_s, moved / self.bytes_per_s)
            estimate.flops += times * flops
            estimate.bytes += times * moved


def estimate(hlo: str, matmul_flops_per_s: float, bytes_per_s: float) -> Estimate:
    """The roofline time of an optimized HLO module's text, by group of instructions."""
    module = _Module(hlo, matmul_flops_per_s, bytes_per_s)
    result = Estimate(collections.Counter(), 0.0, 0.0)
    module.walk(module.entry, 1, result)
    return result
