// Reading a MongoDB URL for messages and the database name, without ever showing its password.

import { describe, expect, it } from 'vitest';

import { UsageError } from '../../../src/errors.js';
import { parseMongoUrl, scrub, withDatabase } from '../../../src/store/mongo/url.js';

describe('parseMongoUrl', () => {
  it('names the hosts with their ports, the database and the options', () => {
    const url = parseMongoUrl('mongodb://daq:hunter2@db1:27018,db2/runs?replicaSet=rs0&serverSelectionTimeoutMS=500');
    expect(url.srv).toBe(false);
    expect(url.hosts).toEqual(['db1:27018', 'db2:27017']);
    expect(url.database).toBe('runs');
    expect([...url.options]).toEqual(['replicaset', 'serverselectiontimeoutms']);
    expect(url.masked).toBe('mongodb://daq:***@db1:27018,db2/runs?replicaSet=rs0&serverSelectionTimeoutMS=500');
  });

  it('uses the runwarden database when the URL names none', () => {
    expect(parseMongoUrl('mongodb://localhost').database).toBe('runwarden');
    expect(parseMongoUrl('mongodb://localhost/').database).toBe('runwarden');
    expect(parseMongoUrl('mongodb://localhost/?replicaSet=rs0').database).toBe('runwarden');
    expect(parseMongoUrl('mongodb://[::1]:27017/x').hosts).toEqual(['[::1]:27017']);
  });

  it('keeps an SRV name as it is', () => {
    const url = parseMongoUrl('mongodb+srv://u:p%40ss@cluster0.example.net/runs');
    expect(url).toMatchObject({ srv: true, hosts: ['cluster0.example.net'], database: 'runs' });
    expect(url.masked).toBe('mongodb+srv://u:***@cluster0.example.net/runs');
  });

  it('refuses what cannot be a database name', () => {
    expect(() => parseMongoUrl('mongodb://h/a.b')).toThrow(UsageError);
    expect(() => parseMongoUrl('mongodb:///runs')).toThrow(UsageError);
    expect(() => parseMongoUrl('postgres://h/runs')).toThrow(UsageError);
  });

  it('scrubs the password, raw and decoded, from any text', () => {
    const url = parseMongoUrl('mongodb://u:p%40ss@h/runs');
    expect(scrub('bad password p%40ss or p@ss', url)).toBe('bad password *** or ***');
    const none = parseMongoUrl('mongodb://h/runs');
    expect(scrub('nothing to hide', none)).toBe('nothing to hide');
  });
});

describe('withDatabase', () => {
  it('puts another database in the path and keeps where credentials are checked', () => {
    expect(withDatabase('mongodb://h1,h2/runs?replicaSet=rs0', 't1')).toBe('mongodb://h1,h2/t1?replicaSet=rs0');
    expect(withDatabase('mongodb://h', 't1')).toBe('mongodb://h/t1');
    expect(withDatabase('mongodb://u:p@h/runs', 't1')).toBe('mongodb://u:p@h/t1?authSource=runs');
    expect(withDatabase('mongodb://u:p@h/?tls=true', 't1')).toBe('mongodb://u:p@h/t1?tls=true&authSource=admin');
    expect(withDatabase('mongodb://u:p@h/runs?authSource=x', 't1')).toBe('mongodb://u:p@h/t1?authSource=x');
  });
});
