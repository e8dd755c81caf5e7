// GitHub's own expression implementation (@actions/expressions) as a line-oriented oracle.
//
// Reads one JSON request per line on stdin, {"expr": "...", "contexts": {...}, "id": any}, and
// writes one
// JSON line per request, echoing its id, in the conformance format: {"result": {"kind", "value"}} or
// {"err": {"kind": "lexing"|"parsing"|"evaluation", "value": message}}. Non-finite numbers are
// written as the strings "NaN", "Infinity" and "-Infinity" so they survive JSON, and objects
// as lists of [key, value] pairs so that their order and de-duplication can be compared.
//
// Two deliberate corrections bring the package in line with GitHub's runner, which is the
// reference: a string literal's '' escapes are all unescaped (the package unescapes only the
// first), and case() evaluates only the branch it picks (the package evaluates every argument).
import * as readline from "node:readline";
import {Evaluator, Lexer, Parser, data} from "@actions/expressions";
import {kindStr} from "@actions/expressions/data/expressiondata";
import {reviver} from "@actions/expressions/data/reviver";
import {TokenType} from "@actions/expressions/lexer";

class GitHubEvaluator extends Evaluator {
  visitFunctionCall(call) {
    if (call.functionName.lexeme.toLowerCase() !== "case") {
      return super.visitFunctionCall(call);
    }
    const args = call.args;
    for (let i = 0; i < args.length - 1; i += 2) {
      const predicate = this.eval(args[i]);
      if (predicate.kind !== data.Kind.Boolean) {
        throw new Error("case predicate must evaluate to a boolean value");
      }
      if (predicate.value) {
        return this.eval(args[i + 1]);
      }
    }
    return this.eval(args[args.length - 1]);
  }
}

function plain(value) {
  switch (value.kind) {
    case data.Kind.Null:
      return null;
    case data.Kind.Boolean:
      return value.value;
    case data.Kind.Number: {
      const n = value.value;
      if (Number.isNaN(n)) return "NaN";
      if (n === Infinity) return "Infinity";
      if (n === -Infinity) return "-Infinity";
      return n;
    }
    case data.Kind.String:
      return value.value;
    case data.Kind.Array:
      return value.values().map(plain);
    default: {
      return value.pairs().map(pair => [pair.key, plain(pair.value)]);
    }
  }
}

function run(expr, contexts) {
  let tokens;
  try {
    tokens = new Lexer(expr).lex().tokens;
  } catch (e) {
    return {err: {kind: "lexing", value: e.message}};
  }
  for (const token of tokens) {
    if (token.type === TokenType.STRING) {
      token.value = token.lexeme.slice(1, -1).replaceAll("''", "'");
    }
  }
  const context = JSON.parse(JSON.stringify(contexts ?? {}), reviver);
  const names = context.pairs().map(pair => pair.key);
  let tree;
  try {
    tree = new Parser(tokens, names, []).parse();
  } catch (e) {
    const where = e.pos === undefined ? "" : ` Located at position ${e.pos.column + 1} within expression: ${expr}`;
    return {err: {kind: "parsing", value: `${e.message}.${where}`}};
  }
  if (tree === undefined) {
    return {result: {kind: "Null", value: null}};
  }
  try {
    const result = new GitHubEvaluator(tree, context).evaluate();
    return {result: {kind: kindStr(result.kind), value: plain(result)}};
  } catch (e) {
    return {err: {kind: "evaluation", value: e.message}};
  }
}

const lines = readline.createInterface({input: process.stdin, crlfDelay: Infinity});
for await (const line of lines) {
  let reply;
  let request;
  try {
    request = JSON.parse(line);
    reply = {id: request.id, ...run(request.expr, request.contexts)};
  } catch (e) {
    reply = {id: request?.id, err: {kind: "oracle", value: String(e && e.stack ? e.stack : e)}};
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
}
