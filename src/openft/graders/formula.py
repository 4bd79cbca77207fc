"""``calculate_output`` of a multi grader: arithmetic over sub-grader names,
parsed with :mod:`ast` and evaluated by walking the tree (never ``eval``).

Allowed: numbers, sub-grader names, ``+ - * /``, ``**`` and ``^`` (both
powers), unary ``+``/``-``, parentheses, and the functions ``min``, ``max``,
``abs``, ``floor``, ``ceil``, ``exp``, ``sqrt``, ``log``. Anything else
(attributes, calls to other names, comparisons, strings, subscripts) is a
:class:`FormulaError` at validation time.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

MAX_LENGTH = 1000

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil,
    "exp": math.exp, "sqrt": math.sqrt, "log": math.log,
}
_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class FormulaError(Exception):
    """The formula is not allowed arithmetic, or names an unknown grader."""


def parse(formula: str, names: set[str]) -> ast.expr:
    """The checked tree of ``formula``; every variable must be in ``names``."""
    if not isinstance(formula, str) or not formula.strip():
        raise FormulaError("must be a non-empty formula such as '0.5 * a + 0.5 * b'")
    if len(formula) > MAX_LENGTH:
        raise FormulaError(f"is longer than {MAX_LENGTH} characters")
    try:
        # `^` means power here, with power's precedence (Python reads it as a low-precedence xor).
        tree = ast.parse(formula.strip().replace("^", "**"), mode="eval").body
    except SyntaxError as exc:
        raise FormulaError(f"is not a valid formula: {exc.msg} at column {exc.offset}") from None
    _check(tree, names)
    return tree


def _check(node: ast.AST, names: set[str]) -> None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise FormulaError(f"may hold numbers only, not {node.value!r}")
    elif isinstance(node, ast.Name):
        if node.id not in names:
            raise FormulaError(f"refers to {node.id!r}, which is not one of the graders "
                               f"({', '.join(sorted(names)) or 'none'})")
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left, names)
        _check(node.right, names)
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        _check(node.operand, names)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        if node.keywords or not node.args:
            raise FormulaError(f"{node.func.id}() takes positional arguments only")
        for arg in node.args:
            _check(arg, names)
    else:
        raise FormulaError(f"uses '{ast.unparse(node)}', which is not allowed arithmetic "
                           f"(numbers, grader names, + - * / ** ^, {', '.join(FUNCTIONS)})")


def evaluate(tree: ast.expr, values: dict[str, float]) -> float:
    """The formula's value; arithmetic errors (division by zero) raise FormulaError."""
    try:
        return float(_eval(tree, values))
    except (ArithmeticError, ValueError) as exc:
        raise FormulaError(f"could not be evaluated: {exc}") from None


def _eval(node: ast.AST, values: dict[str, float]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, values), _eval(node.right, values)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, values))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    return FUNCTIONS[node.func.id](*(_eval(arg, values) for arg in node.args))
