import { describe, expect, it } from 'vitest';

import {
  claimSort,
  COLLECTIONS,
  EVENTS_SORT,
  INDEXES,
  LIST_RUNS_SORT,
  LOG_SORT,
  MONITOR_SORT,
  MONITOR_TTL_SECONDS,
  type SortSpec,
} from '../../../src/store/mongo/queries.js';

// The indexes created at start must serve the queries the backend sends (issue: "indexes that serve the claim
// query, the cleanup queries and the listing"). Checked against the same builders the store uses: an index
// serves an equality filter on `equal` plus a sort when its key is those fields, then the sort's fields in
// the sort's directions (or all reversed, which MongoDB walks backwards).

function serves(collection: string, equal: string[], sort: SortSpec): boolean {
  const sortKeys = Object.entries(sort);
  return INDEXES.some((index) => {
    if (index.collection !== collection || index.partialFilterExpression) return false;
    const key = Object.entries(index.key);
    if (key.length < equal.length + sortKeys.length) return false;
    const head = key.slice(0, equal.length).map(([field]) => field);
    if ([...head].sort().join() !== [...equal].sort().join()) return false;
    const rest = key.slice(equal.length, equal.length + sortKeys.length);
    const same = rest.every(([field, dir], i) => field === sortKeys[i]![0] && dir === sortKeys[i]![1]);
    const reversed = rest.every(([field, dir], i) => field === sortKeys[i]![0] && dir === -Number(sortKeys[i]![1]));
    return same || reversed;
  });
}

describe('MongoDB indexes', () => {
  it('serve the claim in both orders: processing.state, then priority, start, number as sorted', () => {
    expect(serves(COLLECTIONS.runs, ['processing.state'], claimSort('newest'))).toBe(true);
    expect(serves(COLLECTIONS.runs, ['processing.state'], claimSort('oldest'))).toBe(true);
  });

  it('serve the cleanup queries (stale leases by state and time) and nextRetryAt', () => {
    expect(serves(COLLECTIONS.runs, ['processing.state'], { 'processing.time': 1 })).toBe(true);
    expect(serves(COLLECTIONS.runs, ['processing.state'], { 'processing.next_retry': 1 })).toBe(true);
  });

  it('serve the listings: by state, by host, by tag (newest number first), events per run, the log', () => {
    expect(serves(COLLECTIONS.runs, ['processing.state'], LIST_RUNS_SORT)).toBe(true);
    expect(serves(COLLECTIONS.runs, ['processing.host'], LIST_RUNS_SORT)).toBe(true);
    expect(serves(COLLECTIONS.runs, ['tags'], LIST_RUNS_SORT)).toBe(true);
    expect(serves(COLLECTIONS.events, ['number'], EVENTS_SORT)).toBe(true);
    expect(serves(COLLECTIONS.log, [], LOG_SORT)).toBe(true);
  });

  it('serve the monitor history of all hosts and of one host in host and minute order', () => {
    expect(serves(COLLECTIONS.monitor, [], MONITOR_SORT)).toBe(true);
    expect(serves(COLLECTIONS.monitor, ['host'], { minute: 1 })).toBe(true);
  });

  it('make run numbers and host names unique, and expire monitor documents after 7 days', () => {
    const find = (collection: string, field: string) =>
      INDEXES.find((i) => i.collection === collection && Object.keys(i.key).join() === field);
    expect(find(COLLECTIONS.runs, 'number')?.unique).toBe(true);
    expect(find(COLLECTIONS.hosts, 'host')?.unique).toBe(true);
    expect(find(COLLECTIONS.monitor, 'time')?.expireAfterSeconds).toBe(MONITOR_TTL_SECONDS);
    expect(MONITOR_TTL_SECONDS).toBe(604_800);
  });
});
