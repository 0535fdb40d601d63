import { describe, expect, it } from 'vitest';

import {
  claimFilter,
  claimSort,
  COLLECTIONS,
  stageIndexes,
  taskPath,
  EVENTS_SORT,
  INDEXES,
  LIST_RUNS_SORT,
  LOG_SORT,
  MONITOR_SORT,
  MONITOR_TTL_SECONDS,
  UNSTAGED_FILTER,
  type IndexSpec,
  type Filter,
  type SortSpec,
} from '../../../src/store/mongo/queries.js';

// The indexes created at start must serve the queries the backend sends (issue: "indexes that serve the claim
// query, the cleanup queries and the listing"). Checked against the same builders the store uses: an index
// serves an equality filter on `equal` plus a sort when its key is those fields, then the sort's fields in
// the sort's directions (or all reversed, which MongoDB walks backwards).

/** Every equality of a partial index's filter is in the query (so the server may use the index for it). */
function implied(index: IndexSpec, query: Filter | undefined): boolean {
  const partial = index.partialFilterExpression;
  if (!partial) return true;
  return query !== undefined && Object.entries(partial).every(([field, value]) => query[field] === value);
}

function serves(collection: string, equal: string[], sort: SortSpec, query?: Filter, stages = ['process', 'compress']): boolean {
  const sortKeys = Object.entries(sort);
  return [...INDEXES, ...stages.flatMap(stageIndexes)].some((index) => {
    if (index.collection !== collection || !implied(index, query)) return false;
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
  it("serve each stage's claim in both orders: its task's state, then priority, start, number as sorted", () => {
    for (const stage of ['process', 'compress']) {
      const state = taskPath(stage, 'state');
      // the claim indexes are partial (ready tasks): the claim filter asks for ready tasks, so they apply
      expect(serves(COLLECTIONS.runs, [state], claimSort('newest'), claimFilter([], stage))).toBe(true);
      expect(serves(COLLECTIONS.runs, [state], claimSort('oldest'), claimFilter([], stage))).toBe(true);
      // …and only because of that: a query without `ready` may not use them
      expect(serves(COLLECTIONS.runs, [state], claimSort('newest'), {})).toBe(false);
    }
    // a stage nobody has claimed or stored yet has no index until its first claim creates them
    expect(serves(COLLECTIONS.runs, [taskPath('upload', 'state')], claimSort('newest'), claimFilter([], 'upload'))).toBe(false);
  });

  it('serve the cleanup queries (stale leases by state and time) and nextRetryAt (failed tasks by state)', () => {
    expect(serves(COLLECTIONS.runs, [taskPath('compress', 'state')], { [taskPath('compress', 'time')]: 1 })).toBe(true);
    expect(serves(COLLECTIONS.runs, [taskPath('process', 'state')], {})).toBe(true);
  });

  it('serve the listings: by state, by tag, by stage (newest number first), unstaged runs, events per task, the log', () => {
    expect(serves(COLLECTIONS.runs, [taskPath('process', 'state')], {})).toBe(true);
    expect(serves(COLLECTIONS.runs, ['tags'], LIST_RUNS_SORT)).toBe(true);
    expect(serves(COLLECTIONS.runs, ['stages'], LIST_RUNS_SORT)).toBe(true);
    expect(Object.keys(UNSTAGED_FILTER)).toEqual(['staged']);
    expect(serves(COLLECTIONS.runs, ['staged'], { number: 1 })).toBe(true);
    expect(serves(COLLECTIONS.events, ['number'], EVENTS_SORT)).toBe(true);
    expect(serves(COLLECTIONS.events, ['number', 'stage'], { attempt: -1 })).toBe(true);
    expect(serves(COLLECTIONS.log, [], LOG_SORT)).toBe(true);
  });

  it('leave room for stages: three per stage, names that differ per stage', () => {
    const names = ['process', 'compress', 'upload'].flatMap(stageIndexes).map((i) => i.name);
    expect(new Set(names).size).toBe(9);
    expect(INDEXES.filter((i) => i.collection === COLLECTIONS.runs).length + 15 * 3).toBeLessThanOrEqual(64);
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
