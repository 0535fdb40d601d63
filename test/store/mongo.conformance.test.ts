// The store conformance suite against a real MongoDB server, unchanged, when RUNWARDEN_TEST_MONGODB_URI
// names one (e.g. mongodb://localhost:27017/?replicaSet=rs0). Each test gets a fresh database, dropped
// afterwards. Without the variable the suite is registered as skipped, so the summary counts it as skipped.

import { randomUUID } from 'node:crypto';

import { MongoClient } from 'mongodb';
import { describe } from 'vitest';

import { openMongoStore } from '../../src/store/mongo/mongo-store.js';
import { withDatabase } from '../../src/store/mongo/url.js';
import { runStoreConformance, type OpenForTest } from './conformance.js';

const uri = process.env.RUNWARDEN_TEST_MONGODB_URI?.trim();

const open: OpenForTest = async () => {
  const database = `runwarden_test_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
  const url = withDatabase(uri as string, database);
  const store = await openMongoStore(url);
  return {
    store,
    // a run as another tool writes it: no tasks, not staged
    insertUnstaged: async (run) => {
      const client = new MongoClient(url, { serverSelectionTimeoutMS: 5_000 });
      try {
        await client
          .db(database)
          .collection('runs')
          .insertOne({ number: run.number, start: new Date(run.start), tags: [], priority: 0, params: {} });
      } finally {
        await client.close();
      }
    },
    cleanup: async () => {
      await store.close();
      const client = new MongoClient(url, { serverSelectionTimeoutMS: 5_000 });
      try {
        await client.db(database).dropDatabase();
      } finally {
        await client.close();
      }
    },
  };
};

if (uri) {
  runStoreConformance('mongodb', open, { tasks: true });
} else {
  console.log('MongoDB conformance suite SKIPPED: RUNWARDEN_TEST_MONGODB_URI is not set');
  describe.skip('MongoDB conformance suite (set RUNWARDEN_TEST_MONGODB_URI to run it)', () => {
    runStoreConformance('mongodb', open, { tasks: true });
  });
}
