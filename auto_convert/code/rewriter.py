"""The libcst transformer that rewrites one PyTorch-API source file to MindSpore.

Names are resolved through the file's own imports (``import torch.nn.functional as F`` makes
``F.pad`` the API ``torch.nn.functional.pad``), looked up in the mapping table, and written with
the canonical MindSpore aliases (``ms``, ``mint``, ``nn``, ``ops``) whose imports replace the torch
ones.  Everything else in the file (layout, comments, other imports) is left as it was.
"""
from __future__ import annotations

from dataclasses import dataclass

import libcst as cst
from libcst.metadata import (PositionProvider, QualifiedNameProvider, QualifiedNameSource,
                             ScopeProvider)

from auto_convert.code.mapping import ApiRule, Mapping


@dataclass(frozen=True)
class Unmapped:
    """One place the converter left as it was: ``api`` at ``path:line:col`` because ``reason``."""
    path: str
    line: int
    col: int
    api: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.api}: {self.reason}"


def _is_torch(name: str) -> bool:
    return name == "torch" or name.startswith("torch.")


def _no_space_equal() -> cst.AssignEqual:
    return cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                           whitespace_after=cst.SimpleWhitespace(""))


class TorchToMindSpore(cst.CSTTransformer):
    METADATA_DEPENDENCIES = (QualifiedNameProvider, PositionProvider, ScopeProvider)

    def __init__(self, mapping: Mapping, path: str, module: cst.Module, keep_torch_imports: bool = False):
        super().__init__()
        # with unmapped uses left, the torch imports stay so that the partial result still names them
        self.keep_torch_imports = keep_torch_imports
        self.mapping = mapping
        self.path = path
        self.module = module
        self.unmapped: list[Unmapped] = []
        self._replace: dict[cst.CSTNode, ApiRule] = {}
        self._call_funcs: set[cst.CSTNode] = set()
        self._aliases_used: set[str] = set()  # canonical aliases (ms, mint, ...) written
        self._full_mindspore = False         # some target had to be written as mindspore.x.y
        self._conflicts: set[str] = set()
        self._already_imported: set[str] = set()
        self._scopes: list[tuple[str, bool]] = []  # ("class", is_cell) / ("func", False)
        self._cell_classes: set[str] = set()
        self._first_import_index: int | None = None
        self._first_import_leading: list = []

    # ---------------------------------------------------------------- helpers
    def _pos(self, node: cst.CSTNode) -> tuple[int, int]:
        p = self.get_metadata(PositionProvider, node, None)
        return (p.start.line, p.start.column + 1) if p else (0, 0)

    def _report(self, node: cst.CSTNode, api: str, reason: str):
        line, col = self._pos(node)
        self.unmapped.append(Unmapped(self.path, line, col, api, reason))

    def _torch_name(self, node: cst.CSTNode) -> str | None:
        # only plain dotted names: the provider also names `torch.f(x).abs` as "torch.f.abs"
        if not isinstance(node, (cst.Name, cst.Attribute)) or not self._dotted(node):
            return None
        for q in self.get_metadata(QualifiedNameProvider, node, set()):
            if q.source == QualifiedNameSource.IMPORT and _is_torch(q.name):
                return q.name
        return None

    def _code(self, node: cst.CSTNode) -> str:
        return self.module.code_for_node(node).strip()

    def _emit(self, target: str) -> cst.BaseExpression:
        """The expression for a fully qualified MindSpore name, using the canonical aliases."""
        for prefix in sorted(self.mapping.aliases, key=len, reverse=True):
            alias = self.mapping.aliases[prefix]
            if target == prefix or target.startswith(prefix + "."):
                if alias in self._conflicts:
                    self._full_mindspore = True
                    return cst.parse_expression(target)
                self._aliases_used.add(alias)
                return cst.parse_expression(alias + target[len(prefix):])
        # a target outside mindspore (a builtin): written as is
        return cst.parse_expression(target)

    def _in_cell_class(self) -> bool:
        for kind, is_cell in reversed(self._scopes):
            if kind == "class":
                return is_cell
        return False

    # ---------------------------------------------------------------- module
    def visit_Module(self, node: cst.Module) -> bool:
        self._find_conflicts()
        for idx, stmt in enumerate(node.body):
            if isinstance(stmt, cst.SimpleStatementLine) and any(self._is_torch_import(s) for s in stmt.body):
                self._first_import_index = idx
                self._first_import_leading = list(stmt.leading_lines)
                break
        return True

    def _find_conflicts(self):
        """Names the canonical aliases would shadow: bound in the file to something else."""
        aliases = set(self.mapping.aliases.values())
        canonical = {v: k for k, v in self.mapping.aliases.items()}
        scopes = {s for s in self.metadata[ScopeProvider].values() if s is not None}
        for scope in scopes:
            for assignment in scope.assignments:
                name = assignment.name
                if name not in aliases:
                    continue
                node = getattr(assignment, "node", None)
                if isinstance(node, (cst.Import, cst.ImportFrom)):
                    bound = self._imported_name(node, name)
                    if bound is not None and _is_torch(bound) and not self.keep_torch_imports:
                        continue
                    if bound == canonical[name]:
                        self._already_imported.add(name)
                        continue
                self._conflicts.add(name)

    @staticmethod
    def _dotted(node: cst.BaseExpression) -> str:
        if isinstance(node, cst.Name):
            return node.value
        if isinstance(node, cst.Attribute):
            head = TorchToMindSpore._dotted(node.value)
            return head + "." + node.attr.value if head else ""
        return ""

    def _imported_name(self, node: cst.Import | cst.ImportFrom, name: str) -> str | None:
        if isinstance(node, cst.Import):
            for a in node.names:
                full = self._dotted(a.name)
                local = a.asname.name.value if a.asname else full.split(".")[0]
                if local == name:
                    return full if a.asname else full.split(".")[0]
            return None
        if node.relative or node.module is None or isinstance(node.names, cst.ImportStar):
            return None
        mod = self._dotted(node.module)
        for a in node.names:
            local = a.asname.name.value if a.asname else self._dotted(a.name)
            if local == name:
                return f"{mod}.{self._dotted(a.name)}"
        return None

    def _is_torch_import(self, stmt: cst.BaseSmallStatement) -> bool:
        if isinstance(stmt, cst.Import):
            return any(_is_torch(self._dotted(a.name)) for a in stmt.names)
        if isinstance(stmt, cst.ImportFrom):
            return not stmt.relative and stmt.module is not None and _is_torch(self._dotted(stmt.module))
        return False

    def leave_Module(self, original: cst.Module, updated: cst.Module) -> cst.Module:
        lines = []
        if self._full_mindspore:
            lines.append("import mindspore")
        if "ms" in self._aliases_used and "ms" not in self._already_imported:
            lines.append("import mindspore as ms")
        froms = sorted(a for a in self._aliases_used - {"ms"} - self._already_imported)
        if froms:
            lines.append(f"from mindspore import {', '.join(froms)}")
        if not lines:
            return updated
        new = [cst.parse_statement(l + "\n") for l in lines]
        if self._first_import_index is not None:
            index = self._first_import_index
            if not self.keep_torch_imports:  # the removed line's comments move to the new import
                new[0] = new[0].with_changes(leading_lines=self._first_import_leading)
        else:
            index = 0
            for idx, stmt in enumerate(updated.body):
                if idx == 0 and isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[0], cst.Expr) \
                        and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString)):
                    index = 1
                elif isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[0], cst.ImportFrom) \
                        and self._dotted(stmt.body[0].module or cst.Name("x")) == "__future__":
                    index = idx + 1
        body = list(updated.body)
        return updated.with_changes(body=body[:index] + new + body[index:])

    # ---------------------------------------------------------------- imports
    def visit_Import(self, node: cst.Import) -> bool:
        return False

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        return False

    def leave_Import(self, original: cst.Import, updated: cst.Import):
        if self.keep_torch_imports:
            return updated
        keep = [a for a in updated.names if not _is_torch(self._dotted(a.name))]
        if len(keep) == len(updated.names):
            return updated
        if not keep:
            return cst.RemoveFromParent()
        keep[-1] = keep[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
        return updated.with_changes(names=keep)

    def leave_ImportFrom(self, original: cst.ImportFrom, updated: cst.ImportFrom):
        if self._is_torch_import(original) and not self.keep_torch_imports:
            return cst.RemoveFromParent()
        return updated

    # ---------------------------------------------------------------- classes and forward
    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        is_cell = False
        for base in node.bases:
            q = self._torch_name(base.value)
            if q is not None:
                rule = self.mapping.apis.get(q)
                is_cell = is_cell or bool(rule and rule.cell)
            elif isinstance(base.value, cst.Name) and base.value.value in self._cell_classes:
                is_cell = True
        if is_cell:
            self._cell_classes.add(node.name.value)
        self._scopes.append(("class", is_cell))
        return True

    def leave_ClassDef(self, original, updated):
        self._scopes.pop()
        return updated

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self._scopes.append(("func", False))
        return True

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef):
        self._scopes.pop()
        new_name = self.mapping.cell_methods.get(updated.name.value)
        if new_name and self._scopes and self._scopes[-1] == ("class", True):
            return updated.with_changes(name=cst.Name(new_name))
        return updated

    # ---------------------------------------------------------------- API references
    def visit_Call(self, node: cst.Call) -> bool:
        self._call_funcs.add(node.func)
        return True

    def _visit_ref(self, node: cst.CSTNode) -> bool:
        q = self._torch_name(node)
        if q is None:
            return True
        rule = self.mapping.apis.get(q)
        if rule is None:
            self._report(node, q, "no MindSpore mapping for this API (add one to the mapping table, or rewrite by hand)")
        elif rule.rewrites_call and node not in self._call_funcs:
            self._report(node, q, f"used without a call: its arguments need rewriting for {rule.to}; call it directly")
        else:
            self._replace[node] = rule
        return False

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        return self._visit_ref(node)

    def visit_Name(self, node: cst.Name) -> bool:
        return self._visit_ref(node)

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        rule = self._replace.get(original)
        if rule is not None:
            return self._emit(rule.to)
        # self.forward(...) / super().forward(...) inside a Cell follow the method's new name
        new_name = self.mapping.cell_methods.get(updated.attr.value)
        if new_name and self._in_cell_class() and (
                (isinstance(updated.value, cst.Name) and updated.value.value == "self")
                or (isinstance(updated.value, cst.Call) and isinstance(updated.value.func, cst.Name)
                    and updated.value.func.value == "super")):
            return updated.with_changes(attr=cst.Name(new_name))
        return updated

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.BaseExpression:
        rule = self._replace.get(original)
        return self._emit(rule.to) if rule is not None else updated

    # ---------------------------------------------------------------- calls
    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        rule = self._replace.get(original.func)
        if rule is not None and rule.args is not None:
            return self._rewrite_call(original, updated, rule)
        if isinstance(original.func, cst.Attribute) and self._torch_name(original.func) is None:
            mrule = self.mapping.tensor_methods.get(original.func.attr.value)
            recv = original.func.value
            if mrule is not None and not (isinstance(recv, cst.Name) and recv.value in ("self", "cls")) \
                    and self._torch_name(recv) is None:
                return self._rewrite_method(original, updated, mrule)
        return updated

    def _pack_varargs(self, args: list[cst.Arg]) -> list[cst.Arg]:
        """``f(2, 3, dtype=d)`` -> ``f((2, 3), dtype=d)``: torch's ``*size`` as one tuple."""
        pos = [a for a in args if a.keyword is None and not a.star]
        if len(pos) <= 1:
            return args
        elements = [cst.Element(a.value) for a in pos]
        packed = cst.Arg(cst.Tuple(elements))
        rest = [a for a in args if not (a.keyword is None and not a.star)]
        return [packed] + rest

    def _rewrite_call(self, original: cst.Call, updated: cst.Call, rule: ApiRule) -> cst.Call:
        api = rule.name
        args = list(updated.args)
        if any(a.star for a in args):
            if rule.rewrites_call or rule.drop or rule.drop_if or rule.unsupported:
                self._report(original, api, "called with *args/**kwargs: cannot check its arguments; spell them out")
            return updated
        if rule.varargs:
            args = self._pack_varargs(args)
        limit = len(rule.args) if rule.positional is None else rule.positional
        out: list[cst.Arg] = []
        given: set[str] = set()
        still_positional = True
        n_pos = 0
        for a in args:
            if a.keyword is None:
                if n_pos >= len(rule.args):
                    self._report(original, api, f"more positional arguments than {api} takes")
                    return updated
                name = rule.args[n_pos]
                n_pos += 1
            else:
                name = a.keyword.value
                if name not in rule.args:
                    self._report(original, api, f"argument '{name}' has no MindSpore equivalent in {rule.to}")
                    continue
            given.add(rule.rename.get(name, name))
            value_code = self._code(a.value)
            if name in rule.unsupported:
                self._report(original, api, f"argument '{name}' has no MindSpore equivalent in {rule.to}")
                continue
            if name in rule.drop:
                still_positional = still_positional and a.keyword is not None
                continue
            if name in rule.drop_if:
                if value_code in rule.drop_if[name]:
                    still_positional = still_positional and a.keyword is not None
                    continue
                self._report(original, api, f"{name}={value_code} is not supported by {rule.to} "
                                            f"(only {', '.join(rule.drop_if[name])})")
                continue
            if name in rule.values:
                if value_code not in rule.values[name]:
                    self._report(original, api, f"{name}={value_code} has no MindSpore equivalent "
                                                f"(known: {', '.join(rule.values[name])})")
                    continue
                a = a.with_changes(value=cst.parse_expression(rule.values[name][value_code]))
            if name in rule.as_tuple:
                v = a.value
                if isinstance(v, cst.Integer):
                    a = a.with_changes(value=cst.Tuple([cst.Element(v, comma=cst.Comma())]))
                elif isinstance(v, (cst.Name, cst.Attribute, cst.Subscript)):
                    code = self._code(v)
                    a = a.with_changes(value=cst.parse_expression(
                        f"({code},) if isinstance({code}, int) else tuple({code})"))
                elif not isinstance(v, (cst.Tuple, cst.List)):
                    self._report(original, api, f"'{name}' must become a tuple for {rule.to}: "
                                                "give a tuple, an int or a variable")
                    continue
            if a.keyword is None and still_positional and n_pos <= limit:
                out.append(a)
                continue
            still_positional = False
            new_kw = rule.rename.get(name, name)
            if a.keyword is None:
                a = a.with_changes(keyword=cst.Name(new_kw), equal=_no_space_equal())
            elif new_kw != name:
                a = a.with_changes(keyword=cst.Name(new_kw))
            out.append(a)
        for kw, expr in rule.defaults.items():
            if kw not in given:
                out.append(cst.Arg(cst.parse_expression(expr), keyword=cst.Name(kw), equal=_no_space_equal()))
        # commas: every argument but the last needs one; a former last one has none
        fixed = []
        for k, a in enumerate(out):
            if k < len(out) - 1 and not isinstance(a.comma, cst.Comma):
                a = a.with_changes(comma=cst.MaybeSentinel.DEFAULT)
            fixed.append(a)
        if fixed and isinstance(fixed[-1].comma, cst.Comma) and not updated.args[-1].comma:
            fixed[-1] = fixed[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
        return updated.with_changes(args=fixed)

    def _rewrite_method(self, original: cst.Call, updated: cst.Call, rule) -> cst.BaseExpression:
        func = updated.func
        assert isinstance(func, cst.Attribute)
        if rule.kind == "shape":
            shape = cst.Attribute(value=func.value, attr=cst.Name("shape"))
            if not updated.args:
                return shape
            arg = updated.args[0]
            if len(updated.args) == 1 and not arg.star and (arg.keyword is None or arg.keyword.value == "dim"):
                return cst.Subscript(value=shape, slice=[cst.SubscriptElement(cst.Index(arg.value))])
            self._report(original, f"Tensor.{rule.name}", "unexpected arguments")
            return updated
        if rule.kind == "method":
            args = self._pack_varargs(list(updated.args)) if rule.varargs else list(updated.args)
            return updated.with_changes(func=func.with_changes(attr=cst.Name(rule.to)), args=args)
        # function: x.m(a) -> f(x, a)
        first = cst.Arg(func.value)
        return cst.Call(func=self._emit(rule.to), args=[first] + list(updated.args))


def convert_source(code: str, path: str, mapping: Mapping) -> tuple[str, list[Unmapped]]:
    """Rewrite one file's text; returns the new text and what could not be mapped."""
    try:
        module = cst.parse_module(code)
    except cst.ParserSyntaxError as e:
        return code, [Unmapped(path, e.raw_line, e.raw_column + 1, "<syntax>", f"not valid Python: {e.message}")]
    wrapper = cst.MetadataWrapper(module)
    transformer = TorchToMindSpore(mapping, path, wrapper.module)
    new = wrapper.visit(transformer)
    unmapped = sorted(set(transformer.unmapped), key=lambda u: (u.line, u.col, u.api))
    if unmapped:
        # second pass, keeping the torch imports the unmapped uses still need
        transformer = TorchToMindSpore(mapping, path, wrapper.module, keep_torch_imports=True)
        new = wrapper.visit(transformer)
    return new.code, unmapped
