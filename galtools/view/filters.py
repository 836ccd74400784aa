"""The filter language of gal-view: a small expression on columns, parsed by hand and never evaluated as Python.

    z_true < 0.1 and morph_class == "disk"
    not (mag_r >= 20 or is_anomaly == true) and object_id != 17

Grammar (``or`` binds loosest, then ``and``, then ``not``)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | comparison
    comparison := operand (("==" | "=" | "!=" | "<" | "<=" | ">" | ">=") operand)?
    operand    := NUMBER | STRING | "true" | "false" | COLUMN | "(" expr ")"

A comparison needs a column on at least one side; a bare operand must be a boolean column.  Parentheses and
``not`` nest at most MAX_DEPTH deep (the parser and the evaluation recurse on them); a chain of ``and``/``or``
terms is one node, however long.  Strings are quoted
with ' or " (backslash escapes the next character); a column whose name is not a plain word is written in
backticks.  A null value never matches a comparison.  The result is a boolean mask over the table's rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galtools.errors import UsageProblem

COMPARISONS = {"==": "equal", "=": "equal", "!=": "not_equal", "<": "less", "<=": "less_equal", ">": "greater",
               ">=": "greater_equal"}
KEYWORDS = ("and", "or", "not", "true", "false")
MAX_LENGTH = 2000
MAX_DEPTH = 50     # parentheses and "not" nested deeper than this are refused (far below Python's recursion limit)


class FilterError(UsageProblem):
    """A filter that does not parse or does not fit the table's columns."""


@dataclass(frozen=True)
class Token:
    kind: str      # number, string, name, op, lparen, rparen, keyword, end
    text: str
    value: object
    position: int  # 0-based character offset in the expression


def _shorten(expression: str, limit: int = 80) -> str:
    return expression if len(expression) <= limit else expression[:limit - 3] + "..."


def _problem(expression: str, position: int, what: str) -> FilterError:
    return FilterError(f"filter {_shorten(expression)!r}: {what} at character {position + 1}",
                       'write comparisons like z_true < 0.1 and morph_class == "disk"')


def tokenize(expression: str) -> list[Token]:
    if len(expression) > MAX_LENGTH:
        raise FilterError(f"filter is {len(expression)} characters long", f"keep it under {MAX_LENGTH}")
    tokens, i, n = [], 0, len(expression)
    while i < n:
        c = expression[i]
        if c.isspace():
            i += 1
        elif c in "()":
            tokens.append(Token("lparen" if c == "(" else "rparen", c, None, i))
            i += 1
        elif expression.startswith(("<=", ">=", "==", "!="), i):
            tokens.append(Token("op", expression[i:i + 2], None, i))
            i += 2
        elif c in "<>=":
            tokens.append(Token("op", c, None, i))
            i += 1
        elif c in "\"'":
            start, i, chars = i, i + 1, []
            while i < n and expression[i] != c:
                if expression[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(expression[i])
                i += 1
            if i >= n:
                raise _problem(expression, start, "unterminated string")
            tokens.append(Token("string", expression[start:i + 1], "".join(chars), start))
            i += 1
        elif c == "`":
            end = expression.find("`", i + 1)
            if end < 0:
                raise _problem(expression, i, "unterminated `column name`")
            tokens.append(Token("name", expression[i:end + 1], expression[i + 1:end], i))
            i = end + 1
        elif c.isdigit() or (c in "+-." and i + 1 < n and (expression[i + 1].isdigit() or expression[i + 1] == ".")):
            start = i
            i += 1
            while i < n and (expression[i].isalnum() or expression[i] in "._" or
                             (expression[i] in "+-" and expression[i - 1] in "eE")):
                i += 1
            text = expression[start:i]
            try:
                value = int(text) if text.lstrip("+-").isdigit() else float(text)
            except ValueError:
                raise _problem(expression, start, f"bad number {text!r}") from None
            if isinstance(value, float) and not np.isfinite(value):
                raise _problem(expression, start, f"bad number {text!r}")
            tokens.append(Token("number", text, value, start))
        elif c.isalpha() or c == "_":
            start = i
            while i < n and (expression[i].isalnum() or expression[i] == "_"):
                i += 1
            word = expression[start:i]
            kind = "keyword" if word.lower() in KEYWORDS else "name"
            tokens.append(Token(kind, word, word.lower() if kind == "keyword" else word, start))
        else:
            raise _problem(expression, i, f"unexpected character {c!r}")
    tokens.append(Token("end", "", None, n))
    return tokens


# The syntax tree: tuples, so that it is plain data.
#   ("or", a, b, ...) ("and", a, b, ...) ("not", a) ("cmp", op, left, right) ("column", name) ("literal", value)

class _Parser:
    def __init__(self, expression: str):
        self.expression = expression
        self.tokens = tokenize(expression)
        self.at = 0
        self.depth = 0

    def deeper(self, token: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"filter {_shorten(self.expression)!r}: parentheses and 'not' nested more than "
                              f"{MAX_DEPTH} deep at character {token.position + 1}",
                              "write the condition with fewer nested parentheses")

    def peek(self) -> Token:
        return self.tokens[self.at]

    def take(self) -> Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token.kind == "keyword" and token.value == word:
            self.at += 1
            return True
        return False

    def parse(self):
        if self.peek().kind == "end":
            raise _problem(self.expression, 0, "empty filter")
        tree = self.expr()
        token = self.peek()
        if token.kind != "end":
            raise _problem(self.expression, token.position, f"unexpected {token.text!r}")
        return tree

    def expr(self):
        terms = [self.and_expr()]
        while self.keyword("or"):
            terms.append(self.and_expr())
        return terms[0] if len(terms) == 1 else ("or", *terms)

    def and_expr(self):
        terms = [self.not_expr()]
        while self.keyword("and"):
            terms.append(self.not_expr())
        return terms[0] if len(terms) == 1 else ("and", *terms)

    def not_expr(self):
        token = self.peek()
        if self.keyword("not"):
            self.deeper(token)
            tree = ("not", self.not_expr())
            self.depth -= 1
            return tree
        return self.comparison()

    def comparison(self):
        left = self.operand()
        token = self.peek()
        if token.kind != "op":
            return left
        self.take()
        right = self.operand()
        if left[0] != "column" and right[0] != "column":
            raise _problem(self.expression, token.position, "a comparison needs a column on one side")
        return ("cmp", COMPARISONS[token.text], left, right)

    def operand(self):
        token = self.take()
        if token.kind == "number" or token.kind == "string":
            return ("literal", token.value)
        if token.kind == "keyword" and token.value in ("true", "false"):
            return ("literal", token.value == "true")
        if token.kind == "name":
            return ("column", token.value)
        if token.kind == "lparen":
            self.deeper(token)
            tree = self.expr()
            self.depth -= 1
            closing = self.take()
            if closing.kind != "rparen":
                raise _problem(self.expression, closing.position,
                               "missing ')'" if closing.kind == "end" else f"expected ')' before {closing.text!r}")
            return tree
        if token.kind == "end":
            raise _problem(self.expression, token.position, "the filter ends too early")
        raise _problem(self.expression, token.position, f"unexpected {token.text!r}")


def parse(expression: str):
    """The syntax tree of ``expression``; FilterError (exit 2) naming the character where it goes wrong."""
    return _Parser(expression).parse()


def columns_of(tree) -> set[str]:
    if tree[0] == "column":
        return {tree[1]}
    if tree[0] == "literal":
        return set()
    if tree[0] == "cmp":
        return columns_of(tree[2]) | columns_of(tree[3])
    return set().union(*(columns_of(t) for t in tree[1:]))


class Filter:
    """A parsed filter, checked against a table's columns once and applied to it as often as needed."""

    def __init__(self, expression: str, schema: pa.Schema):
        self.expression = expression
        self.tree = parse(expression)
        unknown = sorted(columns_of(self.tree) - set(schema.names))
        if unknown:
            raise FilterError(f"filter {_shorten(expression)!r}: no column {unknown[0]!r}",
                              f"columns: {', '.join(schema.names)}")
        self.schema = schema

    def mask(self, table: pa.Table) -> np.ndarray:
        """Boolean numpy mask of the rows of ``table`` that match (null never matches)."""
        result = self._evaluate(self.tree, table)
        if not isinstance(result, (pa.Array, pa.ChunkedArray)) or not pa.types.is_boolean(result.type):
            raise FilterError(f"filter {_shorten(self.expression)!r} is not a condition",
                              'compare a column with a value, e.g. z_true < 0.1')
        return pc.fill_null(result, False).to_numpy(zero_copy_only=False).astype(bool)

    def _evaluate(self, tree, table: pa.Table):
        kind = tree[0]
        if kind == "literal":
            return tree[1]
        if kind == "column":
            return table.column(tree[1])
        if kind == "not":
            return pc.invert(self._condition(tree[1], table))
        if kind in ("and", "or"):
            combine = pc.and_kleene if kind == "and" else pc.or_kleene
            result = self._condition(tree[1], table)
            for term in tree[2:]:
                result = combine(result, self._condition(term, table))
            return result
        _, function, left_tree, right_tree = tree
        left, right = self._evaluate(left_tree, table), self._evaluate(right_tree, table)
        try:
            return getattr(pc, function)(left, right)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            raise FilterError(f"filter {_shorten(self.expression)!r}: cannot compare {self._describe(left_tree)} with "
                              f"{self._describe(right_tree)}", "compare numbers with numbers, text with quoted text") \
                from None

    def _condition(self, tree, table: pa.Table):
        value = self._evaluate(tree, table)
        if isinstance(value, bool):
            return pa.array(np.full(table.num_rows, value))
        if not isinstance(value, (pa.Array, pa.ChunkedArray)) or not pa.types.is_boolean(value.type):
            raise FilterError(f"filter {_shorten(self.expression)!r}: {self._describe(tree)} is not true or false",
                              'compare it with a value, e.g. mag_r < 20')
        return value

    def _describe(self, tree) -> str:
        if tree[0] == "column":
            return f"column {tree[1]!r} ({self.schema.field(tree[1]).type})"
        if tree[0] == "literal":
            return repr(tree[1])
        return "a condition"
