"""The syntax tree of an expression and the recursive-descent parser that builds it.

Precedence, from loosest: ``||``, ``&&``, ``== !=``, ``< <= > >=``, ``!``, then member access
(``.name``, ``[index]``, ``.*``, ``[*]``) on names, calls and parenthesised groups. The parser
counts nesting the way GitHub does and stops at depth 50 with GitHub's message, so no input
can exhaust Python's stack; chains of ``==``/``<`` are built in loops and evaluated iteratively.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from vmrunner.errors import ExpressionParsingError
from vmrunner.workflow.expressions import lexer as t
from vmrunner.workflow.expressions.functions import BUILTIN_FUNCTIONS, FUNCTIONS, FunctionInfo
from vmrunner.workflow.expressions.lexer import Token, tokenize

#: GitHub's limit on how deeply an expression may nest.
MAX_DEPTH: Final = 50


class Node:
    """A node of the syntax tree; ``pos`` is the offset of its main token in the expression."""

    __slots__ = ("pos",)

    def __init__(self, pos: int) -> None:
        self.pos = pos


class Literal(Node):
    """``null``, ``true``, ``false``, a number or a 'string'."""

    __slots__ = ("value",)

    def __init__(self, value: Any, pos: int) -> None:
        super().__init__(pos)
        self.value = value


class NamedValue(Node):
    """A context such as ``github``; ``name`` as written (lookup ignores case)."""

    __slots__ = ("name",)

    def __init__(self, name: str, pos: int) -> None:
        super().__init__(pos)
        self.name = name


class Star(Node):
    """The ``*`` of ``.*`` and ``[*]``."""

    __slots__ = ()


class Index(Node):
    """``target[index]`` or ``target.name`` (a string literal index) or a ``*`` filter."""

    __slots__ = ("index", "target")

    def __init__(self, target: Node, index: Node, pos: int) -> None:
        super().__init__(pos)
        self.target = target
        self.index = index


class Not(Node):
    """``!operand``."""

    __slots__ = ("operand",)

    def __init__(self, operand: Node, pos: int) -> None:
        super().__init__(pos)
        self.operand = operand


class Compare(Node):
    """``left op right`` with ``op`` one of ``== != < <= > >=``."""

    __slots__ = ("left", "op", "right")

    def __init__(self, op: str, left: Node, right: Node, pos: int) -> None:
        super().__init__(pos)
        self.op = op
        self.left = left
        self.right = right


class Logical(Node):
    """``a && b && ...`` or ``a || b || ...``: yields the deciding operand itself."""

    __slots__ = ("op", "operands")

    def __init__(self, op: str, operands: tuple[Node, ...], pos: int) -> None:
        super().__init__(pos)
        self.op = op
        self.operands = operands


class Group(Node):
    """``( inner )``."""

    __slots__ = ("inner",)

    def __init__(self, inner: Node, pos: int) -> None:
        super().__init__(pos)
        self.inner = inner


class Call(Node):
    """``name(args...)``; ``name`` is lower-case, ``spelling`` as written."""

    __slots__ = ("args", "name", "spelling")

    def __init__(self, spelling: str, args: tuple[Node, ...], pos: int) -> None:
        super().__init__(pos)
        self.spelling = spelling
        self.name = spelling.lower()
        self.args = args


@dataclass(frozen=True, slots=True, eq=False)
class Expression:
    """A parsed expression: its text, its tree (None when empty) and what it refers to.

    ``named_values`` and ``functions`` hold lower-case names, so callers can check which
    contexts an expression needs, or whether an ``if:`` calls a status function.
    """

    text: str
    root: Node | None
    named_values: frozenset[str]
    functions: frozenset[str]


class _Parser:
    """One parse of one token list; mirrors GitHub's grammar and depth accounting."""

    def __init__(
        self,
        text: str,
        tokens: list[Token],
        contexts: frozenset[str] | None,
        functions: Mapping[str, FunctionInfo],
    ) -> None:
        self.text = text
        self.tokens = tokens
        self.offset = 0
        self.depth = 0
        self.contexts = contexts
        self.functions = functions
        self.named_values: set[str] = set()
        self.called: set[str] = set()

    def error(self, message: str, token: Token) -> ExpressionParsingError:
        return ExpressionParsingError(f"{message}: '{token.describe()}'", self.text, token.pos)

    def peek(self) -> Token:
        return self.tokens[self.offset]

    def check(self, kind: int) -> bool:
        return self.tokens[self.offset].type == kind

    def match(self, kind: int) -> bool:
        if self.tokens[self.offset].type == kind and kind != t.EOF:
            self.offset += 1
            return True
        return False

    def at_end(self) -> bool:
        return self.tokens[self.offset].type == t.EOF

    def previous(self) -> Token:
        return self.tokens[self.offset - 1]

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"Exceeded max expression depth {MAX_DEPTH}", self.peek())

    def parse(self) -> Node | None:
        if self.at_end():
            return None
        root = self.expression()
        if not self.at_end():
            raise self.error("Unexpected symbol", self.peek())
        return root

    def expression(self) -> Node:
        self.enter()
        node = self.logical(t.OR, "||")
        self.depth -= 1
        return node

    def logical(self, kind: int, op: str) -> Node:
        first = self.logical(t.AND, "&&") if kind == t.OR else self.equality()
        if not self.check(kind):
            return first
        pos = self.peek().pos
        self.enter()
        operands = [first]
        while self.match(kind):
            operands.append(self.logical(t.AND, "&&") if kind == t.OR else self.equality())
        self.depth -= 1
        return Logical(op, tuple(operands), pos)

    def equality(self) -> Node:
        node = self.comparison()
        while self.check(t.EQUAL_EQUAL) or self.check(t.BANG_EQUAL):
            operator = self.tokens[self.offset]
            self.offset += 1
            node = Compare(operator.lexeme, node, self.comparison(), operator.pos)
        return node

    def comparison(self) -> Node:
        node = self.unary()
        while self.peek().type in (t.GREATER, t.GREATER_EQUAL, t.LESS, t.LESS_EQUAL):
            operator = self.tokens[self.offset]
            self.offset += 1
            node = Compare(operator.lexeme, node, self.unary(), operator.pos)
        return node

    def unary(self) -> Node:
        if self.match(t.BANG):
            pos = self.previous().pos
            self.enter()
            operand = self.unary()
            self.depth -= 1
            return Not(operand, pos)
        return self.postfix()

    def postfix(self) -> Node:
        node = self.call()
        if not isinstance(node, Group | Call | NamedValue):
            return node
        entered = 0
        while True:
            if self.match(t.LEFT_BRACKET):
                pos = self.previous().pos
                index: Node
                index = Star(self.previous().pos) if self.match(t.STAR) else self.expression()
                if not self.match(t.RIGHT_BRACKET):
                    raise self.error("Unexpected symbol", self.peek())
                self.enter()
                entered += 1
                node = Index(node, index, pos)
            elif self.match(t.DOT):
                pos = self.previous().pos
                self.enter()
                entered += 1
                if self.match(t.IDENTIFIER):
                    name = self.previous()
                    node = Index(node, Literal(name.lexeme, name.pos), pos)
                elif self.match(t.STAR):
                    node = Index(node, Star(self.previous().pos), pos)
                else:
                    raise self.error("Unexpected symbol", self.peek())
            else:
                break
        self.depth -= entered
        return node

    def call(self) -> Node:
        if not self.check(t.IDENTIFIER):
            return self.primary()
        identifier = self.tokens[self.offset]
        self.offset += 1
        if not self.match(t.LEFT_PAREN):
            name = identifier.lexeme.lower()
            if self.contexts is not None and name not in self.contexts:
                raise self.error("Unrecognized named-value", identifier)
            self.named_values.add(name)
            return NamedValue(identifier.lexeme, identifier.pos)
        args: list[Node] = []
        while not self.match(t.RIGHT_PAREN):
            args.append(self.expression())
            if not self.check(t.RIGHT_PAREN) and not self.match(t.COMMA):
                raise self.error("Unexpected symbol", self.peek())
        self.validate_call(identifier, len(args))
        return Call(identifier.lexeme, tuple(args), identifier.pos)

    def validate_call(self, identifier: Token, count: int) -> None:
        name = identifier.lexeme.lower()
        info = self.functions.get(name)
        if info is None:
            raise self.error("Unrecognized function", identifier)
        if count < info.min_args:
            raise self.error("Too few parameters supplied", identifier)
        if count > info.max_args:
            raise self.error("Too many parameters supplied", identifier)
        if name == "case" and count % 2 == 0:
            raise self.error(
                "Even number of parameters supplied, requires an odd number of parameters",
                identifier,
            )
        self.called.add(name)

    def primary(self) -> Node:
        token = self.tokens[self.offset]
        kind = token.type
        if kind in (t.TRUE, t.FALSE, t.NULL, t.NUMBER, t.STRING):
            self.offset += 1
            return Literal(token.value, token.pos)
        if kind == t.LEFT_PAREN:
            self.offset += 1
            inner = self.expression()
            if self.at_end():
                raise self.error("Unexpected end of expression", self.previous())
            if not self.match(t.RIGHT_PAREN):
                raise self.error("Unexpected symbol", self.peek())
            return Group(inner, token.pos)
        if kind == t.EOF:
            raise self.error("Unexpected end of expression", self.previous())
        raise self.error("Unexpected symbol", token)


def function_table(functions: Collection[str] | None) -> Mapping[str, FunctionInfo]:
    """The functions an expression may call: all known ones, or the built-ins plus ``functions``."""
    if functions is None:
        return FUNCTIONS
    allowed = BUILTIN_FUNCTIONS | {name.lower() for name in functions}
    return {name: info for name, info in FUNCTIONS.items() if name in allowed}


def parse_tokens(
    text: str,
    contexts: frozenset[str] | None,
    functions: Mapping[str, FunctionInfo],
) -> Expression:
    """Lex and parse ``text``; ``contexts`` (lower-case) restricts the named values allowed."""
    parser = _Parser(text, tokenize(text), contexts, functions)
    root = parser.parse()
    return Expression(text, root, frozenset(parser.named_values), frozenset(parser.called))
