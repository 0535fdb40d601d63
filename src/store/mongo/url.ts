// What runwarden needs to know about a MongoDB URL before the driver sees it: the hosts (for messages), the
// database, the password (to keep it out of every message) and which options the user set. Parsed by hand
// because a seed list (mongodb://h1,h2/db) is not a WHATWG URL.

import { UsageError } from '../../errors.js';

/** The database when the URL names none. */
export const DEFAULT_DATABASE = 'runwarden';

export interface MongoUrl {
  /** mongodb+srv:// (one DNS name that resolves to the hosts) rather than a seed list. */
  srv: boolean;
  /** host:port as written, default port added; for SRV the DNS name. */
  hosts: string[];
  database: string;
  /** Option names from the query string, lower-cased. */
  options: Set<string>;
  /** The password, decoded and raw, to scrub from messages; empty when there is none. */
  secrets: string[];
  /** The URL with the password replaced by ***. */
  masked: string;
}

const SCHEME = /^(mongodb(?:\+srv)?):\/\//i;

export function parseMongoUrl(url: string): MongoUrl {
  const scheme = SCHEME.exec(url);
  if (!scheme) throw new UsageError('store: a MongoDB URL starts with mongodb:// or mongodb+srv://', 'store');
  const srv = scheme[1].toLowerCase() === 'mongodb+srv';
  const rest = url.slice(scheme[0].length);
  const queryAt = rest.indexOf('?');
  const beforeQuery = queryAt >= 0 ? rest.slice(0, queryAt) : rest;
  const query = queryAt >= 0 ? rest.slice(queryAt + 1) : '';
  const slash = beforeQuery.indexOf('/', beforeQuery.lastIndexOf('@') + 1);
  const authority = slash >= 0 ? beforeQuery.slice(0, slash) : beforeQuery;
  const path = slash >= 0 ? beforeQuery.slice(slash + 1) : '';

  const at = authority.lastIndexOf('@');
  const userInfo = at >= 0 ? authority.slice(0, at) : '';
  const hostList = at >= 0 ? authority.slice(at + 1) : authority;
  const colon = userInfo.indexOf(':');
  const rawPassword = colon >= 0 ? userInfo.slice(colon + 1) : '';
  const secrets = rawPassword === '' ? [] : [rawPassword, safeDecode(rawPassword)].filter((s) => s !== '');

  const hosts = hostList
    .split(',')
    .filter((h) => h !== '')
    .map((h) => (srv || /:\d+$/.test(h) || /^\[.*\]:\d+$/.test(h) ? h : `${h}:27017`));
  if (hosts.length === 0) throw new UsageError('store: the MongoDB URL names no host', 'store');

  const database = safeDecode(path) || DEFAULT_DATABASE;
  if (/[/\\. "$]/.test(database)) {
    throw new UsageError(`store: ${JSON.stringify(database)} is not a usable MongoDB database name`, 'store');
  }
  const options = new Set(
    query
      .split('&')
      .map((pair) => pair.split('=')[0].toLowerCase())
      .filter((name) => name !== ''),
  );
  const masked = colon >= 0 ? url.replace(`${userInfo}@`, `${userInfo.slice(0, colon)}:***@`) : url;
  return { srv, hosts, database, options, secrets, masked };
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/** Replaces every occurrence of the URL's password in `text` by ***. */
export function scrub(text: string, url: MongoUrl): string {
  let out = text;
  for (const secret of url.secrets) out = out.split(secret).join('***');
  return out;
}

/** The same URL with another database in its path (tests use a fresh database each). */
export function withDatabase(url: string, database: string): string {
  const scheme = SCHEME.exec(url);
  if (!scheme) throw new UsageError('store: a MongoDB URL starts with mongodb:// or mongodb+srv://', 'store');
  const rest = url.slice(scheme[0].length);
  const queryAt = rest.indexOf('?');
  const beforeQuery = queryAt >= 0 ? rest.slice(0, queryAt) : rest;
  const query = queryAt >= 0 ? rest.slice(queryAt) : '';
  const slash = beforeQuery.indexOf('/', beforeQuery.lastIndexOf('@') + 1);
  const authority = slash >= 0 ? beforeQuery.slice(0, slash) : beforeQuery;
  let options = query;
  // credentials are checked against the path's database unless authSource says otherwise: keep that one
  const parsed = parseMongoUrl(url);
  if (authority.includes('@') && !parsed.options.has('authsource')) {
    const source = slash >= 0 && beforeQuery.slice(slash + 1) !== '' ? parsed.database : 'admin';
    options = `${options === '' ? '?' : `${options}&`}authSource=${encodeURIComponent(source)}`;
  }
  return `${scheme[0]}${authority}/${encodeURIComponent(database)}${options}`;
}
