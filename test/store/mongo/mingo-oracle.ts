// An independent implementation of MongoDB's query and update language (mingo) to check the documents the
// MongoDB backend sends, without a server. Two things are added so it answers as a server would:
// - `$lt`/`$lte`/`$gt`/`$gte` in expressions compare across types in BSON order (a missing value or a number
//   sorts below every date on a server; mingo alone would answer false), so a missing type guard is caught;
// - `$$NOW` is pinned to a given instant by rewriting a copy of the document (mingo reads the wall clock).

import { Context, evalExpr } from 'mingo/core';
import * as accumulator from 'mingo/operators/accumulator';
import * as expression from 'mingo/operators/expression';
import * as pipeline from 'mingo/operators/pipeline';
import * as projection from 'mingo/operators/projection';
import * as query from 'mingo/operators/query';
import { Aggregator } from 'mingo/aggregator';
import { Query } from 'mingo/query';
import { updateOne } from 'mingo/updater';
import type { Document } from 'mongodb';

import type { SortSpec } from '../../../src/store/mongo/queries.js';

/** Rank of a value's type in MongoDB's comparison order (only the types runwarden's documents hold). */
function bsonRank(value: unknown): number {
  if (value === undefined || value === null) return 1;
  if (typeof value === 'number' || typeof value === 'bigint') return 2;
  if (typeof value === 'string') return 3;
  if (value instanceof Date) return 9;
  if (typeof value === 'boolean') return 8;
  if (Array.isArray(value)) return 5;
  return 4;
}

export function bsonCompare(a: unknown, b: unknown): number {
  const ra = bsonRank(a);
  const rb = bsonRank(b);
  if (ra !== rb) return ra - rb;
  if (ra === 1) return 0;
  const va = a instanceof Date ? a.getTime() : (a as number | string);
  const vb = b instanceof Date ? b.getTime() : (b as number | string);
  return va < vb ? -1 : va > vb ? 1 : 0;
}

type ExpressionOperator = (obj: unknown, expr: unknown, options: never) => unknown;

function comparison(test: (order: number) => boolean): ExpressionOperator {
  return (obj, expr, options) => {
    const [a, b] = evalExpr(obj, expr, options) as [unknown, unknown];
    return test(bsonCompare(a, b));
  };
}

export const context = Context.init({
  accumulator: { ...accumulator } as never,
  expression: {
    ...expression,
    $lt: comparison((c) => c < 0),
    $lte: comparison((c) => c <= 0),
    $gt: comparison((c) => c > 0),
    $gte: comparison((c) => c >= 0),
  } as never,
  pipeline: { ...pipeline } as never,
  projection: { ...projection } as never,
  query: { ...query } as never,
});

/** A copy of `doc` with every `$$NOW` replaced by the fixed instant `now` (values under $literal untouched). */
export function atNow<T>(doc: T, now: number): T {
  const visit = (value: unknown): unknown => {
    if (value === '$$NOW') return { $literal: new Date(now) };
    if (Array.isArray(value)) return value.map(visit);
    if (value instanceof Date || value === null || typeof value !== 'object') return value;
    const out: Record<string, unknown> = {};
    for (const [key, inner] of Object.entries(value)) out[key] = key === '$literal' ? inner : visit(inner);
    return out;
  };
  return visit(doc) as T;
}

/** The documents `filter` selects at `now`, in `sort` order. */
export function select(docs: Document[], filter: Document, now: number, sort?: SortSpec): Document[] {
  let cursor = new Query(atNow(filter, now), { context }).find(docs);
  if (sort) cursor = cursor.sort(sort);
  return cursor.all() as Document[];
}

export function matches(doc: Document, filter: Document, now: number): boolean {
  return new Query(atNow(filter, now), { context }).test(doc);
}

/**
 * findOneAndUpdate in memory: updates the first document `filter` selects in `sort` order with `update` (a
 * pipeline or update operators), in place, and returns it as it is afterwards, or null.
 */
export function findOneAndUpdate(
  docs: Document[],
  filter: Document,
  update: Document | Document[],
  now: number,
  sort?: SortSpec,
): Document | null {
  const result = updateOne(docs, atNow(filter, now), atNow(update, now) as never, sort ? { sort } : {}, {
    context,
  });
  if (result.matchedCount === 0 || result.modifiedIndex === undefined) {
    return result.matchedCount === 0 ? null : (select(docs, filter, now, sort)[0] ?? null);
  }
  return docs[result.modifiedIndex];
}

export function aggregate(docs: Document[], stages: Document[], now: number): Document[] {
  return new Aggregator(atNow(stages, now), { context }).run(docs) as Document[];
}
