// The conformance suite, unchanged, driving the real MongoRunStore class on an in-memory stand-in for the
// driver's collections (mingo-db.ts). This checks the class's own logic (events, fencing, duplicates,
// conversions, wake-ups) on every run; it does not replace the run against a real server
// (mongo.conformance.test.ts with RUNWARDEN_TEST_MONGODB_URI).

import type { Db, MongoClient } from 'mongodb';

import { MongoRunStore } from '../../../src/store/mongo/mongo-store.js';
import { parseMongoUrl } from '../../../src/store/mongo/url.js';
import { topologyFromHello } from '../../../src/store/mongo/wake.js';
import type { NewRun } from '../../../src/store/types.js';
import { runStoreConformance } from '../conformance.js';
import { MingoDb } from './mingo-db.js';

runStoreConformance('mongodb (MongoRunStore on in-memory mingo collections, no server)', async () => {
  const client = { close: async () => undefined } as unknown as MongoClient;
  const db = new MingoDb() as unknown as Db;
  const store = new MongoRunStore(client, db, parseMongoUrl('mongodb://mingo/runs'), topologyFromHello({}), {
    idlePollMs: 50,
  });
  return {
    store,
    cleanup: () => store.close(),
    writeProcessing: async (number, fields, stage = 'process') => {
      const set: Record<string, unknown> = {};
      for (const [key, value] of Object.entries(fields)) set[`tasks.${stage}.${key}`] = value;
      await db.collection('runs').updateOne({ number }, { $set: set });
    },
    insertUnstaged: async (run: NewRun) => {
      await db.collection('runs').insertOne({ number: run.number, start: new Date(run.start), tags: [], priority: 0, params: {} });
    },
  };
}, { tasks: true });
