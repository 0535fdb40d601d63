// A stand-in for the few driver calls MongoRunStore makes (Db.collection and the Collection methods it uses),
// evaluated by mingo in memory. It lets the whole conformance suite drive the real MongoRunStore class without
// a server. It is NOT a MongoDB server: each call is atomic because it is synchronous, unique indexes are
// enforced only for runs.number and hosts.host, and $$NOW is this process's clock.

import { ObjectId, type Document } from 'mongodb';

import type { SortSpec } from '../../../src/store/mongo/queries.js';
import { aggregate, findOneAndUpdate, select } from './mingo-oracle.js';

/** Deep copy that keeps dates and ObjectIds (structuredClone would turn an ObjectId into a plain object). */
function clone<T>(value: T): T {
  if (value instanceof Date) return new Date(value.getTime()) as T;
  if (value instanceof ObjectId) return value;
  if (Array.isArray(value)) return value.map(clone) as T;
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = clone(v);
    return out as T;
  }
  return value;
}

function duplicateKey(index?: number): Error {
  const error = Object.assign(new Error('E11000 duplicate key error'), { code: 11000 });
  return index === undefined ? error : Object.assign(error, { writeErrors: [{ index, code: 11000 }] });
}

class MingoCursor {
  private sortSpec: SortSpec | undefined;
  private limitTo: number | undefined;
  constructor(private readonly run: (sort?: SortSpec) => Document[]) {}
  sort(spec: SortSpec): this {
    this.sortSpec = spec;
    return this;
  }
  limit(n: number): this {
    this.limitTo = n;
    return this;
  }
  async toArray(): Promise<Document[]> {
    const all = this.run(this.sortSpec).map(clone);
    return this.limitTo ? all.slice(0, this.limitTo) : all;
  }
  async next(): Promise<Document | null> {
    return (await this.limit(1).toArray())[0] ?? null;
  }
}

export class MingoCollection {
  readonly docs: Document[] = [];
  constructor(private readonly uniqueKey: string | undefined) {}

  private taken(doc: Document, others: Document[] = this.docs): boolean {
    const key = this.uniqueKey;
    return key !== undefined && others.some((d) => d[key] === doc[key]);
  }

  async createIndexes(): Promise<string[]> {
    return [];
  }

  async insertOne(doc: Document): Promise<{ insertedId: unknown }> {
    if (doc._id === undefined) doc._id = new ObjectId();
    if (this.taken(doc)) throw duplicateKey();
    this.docs.push(clone(doc));
    return { insertedId: doc._id };
  }

  async insertMany(docs: Document[]): Promise<{ insertedCount: number }> {
    for (const [index, doc] of docs.entries()) {
      if (doc._id === undefined) doc._id = new ObjectId();
      if (this.taken(doc)) throw duplicateKey(index);
      this.docs.push(clone(doc));
    }
    return { insertedCount: docs.length };
  }

  find(filter: Document = {}): MingoCursor {
    return new MingoCursor((sort) => select(this.docs, filter, Date.now(), sort));
  }

  async findOne(filter: Document, options: { sort?: SortSpec } = {}): Promise<Document | null> {
    const cursor = this.find(filter);
    return (options.sort ? cursor.sort(options.sort) : cursor).next();
  }

  async findOneAndUpdate(
    filter: Document,
    update: Document | Document[],
    options: { sort?: SortSpec; returnDocument?: 'before' | 'after' } = {},
  ): Promise<Document | null> {
    if (options.returnDocument === 'before') {
      const before = select(this.docs, filter, Date.now(), options.sort)[0];
      if (before === undefined) return null;
      const copy = clone(before);
      this.updateInPlace(before, update);
      return copy;
    }
    const after = findOneAndUpdate(this.docs, filter, update, Date.now(), options.sort);
    return after ? clone(after) : null;
  }

  async updateOne(
    filter: Document,
    update: Document | Document[],
    options: { upsert?: boolean } = {},
  ): Promise<{ matchedCount: number }> {
    const after = findOneAndUpdate(this.docs, filter, update, Date.now());
    if (after) return { matchedCount: 1 };
    if (options.upsert) {
      const fresh: Document[] = [{ ...clone(filter), _id: new ObjectId() }];
      findOneAndUpdate(fresh, {}, update, Date.now());
      this.docs.push(fresh[0]);
    }
    return { matchedCount: 0 };
  }

  /** Applies `update` to the stored document `doc`, keeping it in its place. */
  private updateInPlace(doc: Document, update: Document | Document[]): void {
    const one = [doc];
    findOneAndUpdate(one, {}, update, Date.now());
    this.docs[this.docs.indexOf(doc)] = one[0] as Document;
  }

  async updateMany(filter: Document, update: Document | Document[]): Promise<{ modifiedCount: number }> {
    const targets = select(this.docs, filter, Date.now());
    for (const doc of targets) this.updateInPlace(doc, update);
    return { modifiedCount: targets.length };
  }

  async distinct(field: string): Promise<unknown[]> {
    const values = new Set<unknown>();
    for (const doc of this.docs) {
      const value = field.split('.').reduce<unknown>((v, key) => (v as Record<string, unknown> | undefined)?.[key], doc);
      for (const one of Array.isArray(value) ? value : [value]) if (one !== undefined) values.add(one);
    }
    return [...values];
  }

  async replaceOne(filter: Document, doc: Document, options: { upsert?: boolean } = {}): Promise<unknown> {
    const current = select(this.docs, filter, Date.now())[0];
    if (current) {
      this.docs[this.docs.indexOf(current)] = { ...clone(doc), _id: current._id };
    } else if (options.upsert) {
      this.docs.push({ ...clone(doc), _id: new ObjectId() });
    }
    return {};
  }

  async deleteOne(filter: Document): Promise<{ deletedCount: number }> {
    const [doomed] = select(this.docs, filter, Date.now());
    if (doomed === undefined) return { deletedCount: 0 };
    this.docs.splice(this.docs.indexOf(doomed), 1);
    return { deletedCount: 1 };
  }

  async deleteMany(filter: Document): Promise<unknown> {
    const doomed = new Set(select(this.docs, filter, Date.now()));
    const kept = this.docs.filter((d) => !doomed.has(d));
    this.docs.splice(0, this.docs.length, ...kept);
    return {};
  }

  aggregate(stages: Document[]): { toArray: () => Promise<Document[]> } {
    return { toArray: async () => aggregate(this.docs, stages, Date.now()).map(clone) };
  }

  async estimatedDocumentCount(): Promise<number> {
    return this.docs.length;
  }
}

/** A database of MingoCollections, created on first use. */
export class MingoDb {
  readonly databaseName = 'runwarden_mingo';
  private readonly collections = new Map<string, MingoCollection>();

  collection(name: string): MingoCollection {
    let c = this.collections.get(name);
    if (!c) {
      c = new MingoCollection(name === 'runs' ? 'number' : name === 'hosts' ? 'host' : undefined);
      this.collections.set(name, c);
    }
    return c;
  }
}
