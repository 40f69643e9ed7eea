'use strict';
// The client against a scripted wx and a virtual clock: no network, no real waiting.
// Run: node --test clients/miniprogram/test/client.test.js

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const { createClient, GatewayError, isFinal } = require('../index.js');
const { fakeClock, fakeWx, json, apiError, settle, START } = require('./harness');

const BASE = 'https://api.example.com';
const HOUR = 3600 * 1000;

function loginAnswer(token, ttlMs = HOUR, clockNow = START) {
  return json(200, { token, expires_at: new Date(clockNow + ttlMs).toISOString(), user: { id: 'u1' } },
    { Date: new Date(clockNow).toUTCString() });
}

function jobBody(status, extra = {}) {
  const final = ['succeeded', 'failed', 'cancelled'].includes(status);
  return {
    id: 'j1', workflow: 'txt2img', status, queue_position: status === 'queued' ? 2 : null, eta_seconds: final ? null : 9,
    progress: { percent: status === 'succeeded' ? 100 : 0, node: null, node_title: null, value: 0, max: 0 },
    preview_url: null, error: null, params: { prompt: 'a cat' }, created_at: '2026-03-01T00:00:00Z',
    started_at: null, finished_at: null, poll_after_ms: final ? null : 1000, ...extra,
  };
}

/** A client on a fake clock and a scripted wx; `routes` answers requests other than logins. */
function setup(routes, { loginRoute, clientOptions = {}, wxOptions = {} } = {}) {
  const clock = fakeClock();
  let logins = 0;
  const wx = fakeWx((req) => {
    if (req.path === '/v1/auth/wechat' || req.path === '/v1/auth/dev') {
      logins += 1;
      return loginRoute ? loginRoute(req, logins, clock) : loginAnswer('tok' + logins, HOUR, clock.now());
    }
    return routes(req);
  }, wxOptions);
  wx.clock = clock;
  const client = createClient({
    baseUrl: BASE + '/', wx, setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout, now: clock.now,
    random: () => 0.5, ...clientOptions,
  });
  return { clock, wx, client, logins: () => logins, api: () => wx.calls.filter((c) => !c.path.startsWith('/v1/auth/')) };
}

/** Start a promise and keep its outcome for later checks (the clock drives it). */
function track(promise) {
  const out = { settled: false };
  promise.then((value) => Object.assign(out, { settled: true, value }), (error) => Object.assign(out, { settled: true, error }));
  return out;
}

// ---- errors -----------------------------------------------------------------------------

test('an error answer becomes a GatewayError with code, message, details, status and retryAfter', async () => {
  const { client } = setup(() => apiError(429, 'rate_limited', 'slow down', { limit: 60 }, { 'retry-after': '7' }));
  await client.devLogin('alice');
  const err = await client.cancel('j1').catch((e) => e);
  assert.ok(err instanceof GatewayError);
  assert.ok(err instanceof Error);
  assert.equal(err.name, 'GatewayError');
  assert.deepEqual({ code: err.code, message: err.message, details: err.details, status: err.status, retryAfter: err.retryAfter },
    { code: 'rate_limited', message: 'slow down', details: { limit: 60 }, status: 429, retryAfter: 7 });
  assert.match(err.stack, /GatewayError/);
});

test('an answer that is not the contract\'s error is bad_response; no details means null', async () => {
  const { client, clock } = setup((req) => (req.path === '/v1/jobs/x'
    ? { statusCode: 502, data: '<html>Bad Gateway</html>', header: {} }
    : apiError(404, 'not_found', 'no such job')));
  await client.devLogin('alice');
  const bad = track(client.job('x'));
  await clock.advance(0);
  assert.equal(bad.error.code, 'bad_response');
  assert.equal(bad.error.status, 502);
  const missing = await client.job('y').catch((e) => e);
  assert.deepEqual([missing.code, missing.status, missing.details, missing.retryAfter], ['not_found', 404, null, null]);
});

test('a network failure is network_error with status 0, after the bounded retries', async () => {
  const { client, clock, api } = setup(() => ({ fail: 'timeout' }), { clientOptions: { maxRetries: 2 } });
  await client.devLogin('alice');
  const out = track(client.workflows());
  await clock.advance(60 * 1000);
  assert.ok(out.error instanceof GatewayError);
  assert.deepEqual([out.error.code, out.error.status, out.error.retryAfter], ['network_error', 0, null]);
  assert.match(out.error.message, /timeout/);
  assert.equal(api().length, 3, 'one call and two retries');
});

test('wx.request is called with JSON, the contract\'s header names and a timeout', async () => {
  const { client, wx } = setup(() => json(202, { job: jobBody('queued') }), { clientOptions: { timeout: 4321 } });
  await client.devLogin('alice');
  await client.submit('txt2img', { prompt: 'a cat' }, { idempotencyKey: 'k-1' });
  const call = wx.calls.find((c) => c.path === '/v1/jobs');
  assert.equal(call.url, BASE + '/v1/jobs');
  assert.equal(call.method, 'POST');
  assert.equal(call.opts.dataType, 'json');
  assert.equal(call.opts.responseType, 'text');
  assert.equal(call.opts.timeout, 4321);
  assert.equal(call.header['Content-Type'], 'application/json');
  assert.equal(call.header.Authorization, 'Bearer tok1');
  assert.equal(call.header['Idempotency-Key'], 'k-1');
  assert.deepEqual(call.body, { workflow: 'txt2img', params: { prompt: 'a cat' } });
});

// ---- login and the token ----------------------------------------------------------------

test('login sends the wx.login code, keeps the token in memory and storage, and a new client reuses it', async () => {
  const { client, wx, clock, logins } = setup(() => json(200, { workflows: [] }));
  const answer = await client.login();
  assert.equal(answer.token, 'tok1');
  assert.deepEqual(client.user(), { id: 'u1' });
  assert.deepEqual(wx.calls[0].body, { code: 'code-1' });
  assert.equal(wx.calls[0].header.Authorization, undefined);
  const stored = JSON.parse(wx.storage.get('comfy-gateway:session'));
  assert.equal(stored.token, 'tok1');
  await client.workflows();
  assert.equal(wx.calls[1].header.Authorization, 'Bearer tok1');

  const again = createClient({ baseUrl: BASE, wx, now: clock.now, setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout });
  await again.workflows();
  assert.equal(wx.calls[2].header.Authorization, 'Bearer tok1');
  assert.equal(logins(), 1, 'the stored token was reused');
  const elsewhere = createClient({ baseUrl: 'https://other.example.com', wx, now: clock.now });
  assert.equal(elsewhere.user(), null, 'a token is kept per baseUrl');
});

test('storage: false keeps the token in memory only; a Web Storage-like object is used when given', async () => {
  const mem = setup(() => json(200, { workflows: [] }), { clientOptions: { storage: false } });
  await mem.client.login();
  assert.equal(mem.wx.storage.size, 0);
  const items = new Map();
  const webStorage = { getItem: (k) => items.get(k) ?? null, setItem: (k, v) => items.set(k, v), removeItem: (k) => items.delete(k) };
  const web = setup(() => json(200, { workflows: [] }), { clientOptions: { storage: webStorage } });
  await web.client.devLogin('bob');
  assert.equal(JSON.parse(items.get('comfy-gateway:session')).token, 'tok1');
  web.client.logout();
  assert.equal(items.size, 0);
  assert.equal(web.client.user(), null);
});

test('the first call without a token logs in by itself', async () => {
  const { client, wx } = setup(() => json(200, { workflows: [{ name: 'txt2img' }] }));
  const list = await client.workflows();
  assert.deepEqual(list, [{ name: 'txt2img' }]);
  assert.deepEqual(wx.calls.map((c) => c.path), ['/v1/auth/wechat', '/v1/workflows']);
});

test('the token is renewed before its expires_at, measured on the server\'s clock', async () => {
  // The phone's clock is 2 hours fast: expires_at is read against the answer's Date header.
  const skew = 2 * HOUR;
  const { client, wx, clock } = setup(() => json(200, { workflows: [] }), {
    loginRoute: (req, n, c) => loginAnswer('tok' + n, HOUR, c.now() - skew),
  });
  await client.login();
  await clock.advance(HOUR - 6 * 60 * 1000); // 6 minutes left: still used
  await client.workflows();
  assert.equal(wx.calls.at(-1).header.Authorization, 'Bearer tok1');
  await clock.advance(2 * 60 * 1000); // 4 minutes left: renewed first (renewBeforeMs 5 minutes)
  await client.workflows();
  assert.deepEqual(wx.calls.slice(-2).map((c) => c.path), ['/v1/auth/wechat', '/v1/workflows']);
  assert.equal(wx.calls.at(-1).header.Authorization, 'Bearer tok2');
});

test('a failed early renewal keeps using the token that still works', async () => {
  const { client, wx, clock } = setup(() => json(200, { workflows: [] }), {
    loginRoute: (req, n, c) => (n === 1 ? loginAnswer('tok1', HOUR, c.now()) : apiError(400, 'invalid_params')),
  });
  await client.devLogin('alice');
  await clock.advance(HOUR - 60 * 1000);
  await client.workflows();
  assert.equal(wx.calls.at(-1).header.Authorization, 'Bearer tok1');
  assert.equal(wx.calls.at(-2).path, '/v1/auth/dev');
});

test('401 token_expired logs in again once (the same way) and retries; a second 401 is thrown', async () => {
  let expired = 0;
  const { client, wx, logins } = setup((req) => {
    if (req.header.Authorization === 'Bearer tok1' || req.path === '/v1/jobs/always') {
      expired += 1;
      return apiError(401, 'token_expired', 'the token has expired');
    }
    return json(200, { job: jobBody('running') });
  });
  await client.devLogin('carol');
  const job = await client.job('j1');
  assert.equal(job.status, 'running');
  assert.equal(logins(), 2);
  assert.deepEqual(wx.calls[2].body, { user: 'carol' }, 'renewed with devLogin, as the session was made');
  assert.equal(wx.calls[3].header.Authorization, 'Bearer tok2');
  const err = await client.job('always').catch((e) => e);
  assert.equal(err.code, 'token_expired');
  assert.equal(logins(), 3, 'only one new login per call');
  assert.equal(expired, 3);
});

test('concurrent calls share one login', async () => {
  const { client, logins } = setup(() => json(200, { workflows: [] }));
  await Promise.all([client.workflows(), client.workflows(), client.jobs({ limit: 1 }).catch(() => null)]);
  assert.equal(logins(), 1);
});

test('a login code WeChat refused is replaced by a fresh one once', async () => {
  const { client, wx, clock } = setup(() => json(200, {}), {
    loginRoute: (req, n, c) => (n === 1 ? apiError(401, 'invalid_code', 'used code') : loginAnswer('tok', HOUR, c.now())),
  });
  const first = track(client.login());
  await clock.advance(0);
  assert.equal(first.value.token, 'tok');
  assert.deepEqual(wx.calls.map((c) => c.body.code), ['code-1', 'code-2']);
  const blocked = setup(() => json(200, {}), { loginRoute: () => apiError(401, 'invalid_code', 'blocked') });
  const refused = track(blocked.client.login());
  await blocked.clock.advance(0);
  const err = refused.error;
  assert.equal(err.code, 'invalid_code');
  assert.equal(blocked.logins(), 2);
  const noCode = setup(() => json(200, {}), { wxOptions: { codes: () => null } });
  assert.equal((await noCode.client.login().catch((e) => e)).code, 'login_failed');
});

// ---- submit -----------------------------------------------------------------------------

test('submit sends notify only when it is true', async () => {
  const { client, api } = setup(() => json(202, { job: jobBody('queued') }));
  await client.devLogin('alice');
  await client.submit('txt2img', { prompt: 'a' }, { notify: true });
  await client.submit('txt2img', { prompt: 'a' }, { notify: false });
  await client.submit('txt2img', { prompt: 'a' });
  assert.deepEqual(api().map((c) => c.body.notify), [true, undefined, undefined]);
});

test('submit retries a 503 with Retry-After after that many seconds, with the same Idempotency-Key', async () => {
  let n = 0;
  const { client, clock, api } = setup((req) => {
    n += 1;
    return n === 1
      ? apiError(503, 'backend_unavailable', 'no server', undefined, { 'Retry-After': '5' })
      : json(202, { job: jobBody('queued') });
  });
  await client.devLogin('alice');
  const out = track(client.submit('txt2img', { prompt: 'a cat' }, { inputs: { image: 'up-1' } }));
  await clock.advance(4999);
  assert.equal(api().length, 1, 'waits the whole Retry-After');
  await clock.advance(1);
  assert.equal(out.value.id, 'j1');
  const keys = api().map((c) => c.header['Idempotency-Key']);
  assert.equal(keys.length, 2);
  assert.match(keys[0], /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(keys[0], keys[1]);
  assert.deepEqual(api()[1].body, { workflow: 'txt2img', params: { prompt: 'a cat' }, inputs: { image: 'up-1' } });
});

test('submit retries network errors with exponential backoff and jitter, keeping the key, then gives up', async () => {
  const clockRandom = [0, 1, 0.5];
  const { client, clock, api } = setup(() => ({ fail: 'timeout' }),
    { clientOptions: { maxRetries: 3, random: () => clockRandom.shift() } });
  await client.devLogin('alice');
  const out = track(client.submit('txt2img', { prompt: 'x' }, { idempotencyKey: 'mine' }));
  await clock.advance(0);
  const at = () => api().map((c) => c.at - START);
  // base 500: caps 500, 1000, 2000; waits between half and all of each (random 0, 1, 0.5).
  await clock.advance(250);
  assert.deepEqual(at(), [0, 250]);
  await clock.advance(1000);
  assert.deepEqual(at(), [0, 250, 1250]);
  await clock.advance(1500);
  assert.deepEqual(at(), [0, 250, 1250, 2750]);
  assert.equal(out.error.code, 'network_error');
  assert.ok(api().every((c) => c.header['Idempotency-Key'] === 'mine'));
});

test('submit does not retry what the user must act on (429, 503 without Retry-After, 400)', async () => {
  for (const answer of [
    apiError(429, 'too_many_active_jobs', 'wait', undefined, { 'Retry-After': '10' }),
    apiError(503, 'backend_unavailable', 'WeChat login is unavailable'),
    apiError(400, 'invalid_params', 'width', { width: 'must be a multiple of 8' }),
  ]) {
    const { client, clock, api } = setup(() => answer);
    await client.devLogin('alice');
    const out = track(client.submit('txt2img', {}));
    await clock.advance(60000);
    assert.equal(out.error.status, answer.statusCode);
    assert.equal(api().length, 1);
  }
});

test('each submit call gets its own key', async () => {
  const { client, api } = setup(() => json(202, { job: jobBody('queued') }));
  await client.submit('txt2img', { prompt: 'a' });
  await client.submit('txt2img', { prompt: 'a' });
  const [a, b] = api().map((c) => c.header['Idempotency-Key']);
  assert.notEqual(a, b);
});

test('a Retry-After longer than maxRetryAfter is not waited for', async () => {
  const { client, clock, api } = setup(() => apiError(503, 'storage_unavailable', 's', undefined, { 'Retry-After': '600' }));
  await client.devLogin('alice');
  const out = track(client.submit('txt2img', {}));
  await clock.advance(0);
  assert.equal(out.error.retryAfter, 600);
  assert.equal(api().length, 1);
});

// ---- upload -----------------------------------------------------------------------------

const FORM = { id: 'up-9', url: 'https://bucket.example.com/', fields: { key: 'u/1', policy: 'p' }, file_field: 'file',
  expires_at: '2026-03-01T01:00:00Z' };

test('upload asks for a form, then wx.uploadFile sends the file with its fields; returns the upload id', async () => {
  const { client, wx } = setup((req) => (req.method === 'UPLOAD' ? { statusCode: 204, data: '' } : json(201, { upload: FORM })));
  await client.devLogin('alice');
  const id = await client.upload('wxfile://tmp/a.png', { contentType: 'image/png', size: 1234 });
  assert.equal(id, 'up-9');
  assert.deepEqual(wx.calls.at(-1).body, { content_type: 'image/png', size: 1234 });
  const sent = wx.uploads[0];
  assert.deepEqual([sent.url, sent.filePath, sent.name, sent.formData], [FORM.url, 'wxfile://tmp/a.png', 'file', FORM.fields]);
  assert.equal(sent.header, undefined, 'the token never goes to the storage host');
});

test('a non-2xx from the upload target is a GatewayError (S3 XML or the contract\'s JSON)', async () => {
  const s3 = '<?xml version="1.0"?><Error><Code>EntityTooLarge</Code><Message>Your proposed upload exceeds the maximum allowed size</Message></Error>';
  for (const [answer, code] of [
    [{ statusCode: 400, data: s3 }, 'payload_too_large'],
    [{ statusCode: 403, data: '<Error><Code>AccessDenied</Code><Message>Policy expired</Message></Error>' }, 'invalid_upload'],
    [{ statusCode: 400, data: JSON.stringify({ error: { code: 'invalid_upload', message: 'the file must be image/png' } }) }, 'invalid_upload'],
  ]) {
    const { client } = setup((req) => (req.method === 'UPLOAD' ? answer : json(201, { upload: FORM })));
    await client.devLogin('alice');
    const err = await client.upload('a.png', { contentType: 'image/png' }).catch((e) => e);
    assert.ok(err instanceof GatewayError);
    assert.equal(err.code, code);
    assert.equal(err.status, answer.statusCode);
  }
  const { client } = setup(() => json(201, { upload: FORM }));
  assert.equal((await client.upload('a.png', {}).catch((e) => e)).code, 'invalid_params');
});

test('a network failure of uploadFile is retried with the same form', async () => {
  let n = 0;
  const { client, clock, wx, api } = setup((req) => {
    if (req.method !== 'UPLOAD') return json(201, { upload: FORM });
    n += 1;
    return n === 1 ? { fail: 'timeout' } : { statusCode: 201, data: '' };
  });
  await client.devLogin('alice');
  const out = track(client.upload('a.png', { contentType: 'image/png' }));
  await clock.advance(1000);
  assert.equal(out.value, 'up-9');
  assert.equal(wx.uploads.length, 2);
  assert.equal(api().length, 1, 'one form');
});

// ---- the other calls --------------------------------------------------------------------

test('result, cancel, jobs and workflows call the contract\'s paths and return its answers', async () => {
  const { client, api } = setup((req) => {
    switch (`${req.method} ${req.path}`) {
      case 'GET /v1/jobs/a%2Fb/result': return json(200, { job_id: 'a/b', images: [{ url: 'https://s/1.png' }] });
      case 'POST /v1/jobs/j1/cancel': return json(202, { job: jobBody('cancelled') });
      case 'GET /v1/jobs?limit=2&cursor=c%3D1': return json(200, { jobs: [jobBody('queued')], next_cursor: null });
      case 'GET /v1/jobs': return json(200, { jobs: [], next_cursor: 'n' });
      case 'GET /v1/workflows': return json(200, { workflows: [{ name: 'txt2img' }] });
      default: return apiError(404, 'not_found');
    }
  });
  await client.devLogin('alice');
  assert.deepEqual(await client.result('a/b'), { job_id: 'a/b', images: [{ url: 'https://s/1.png' }] });
  assert.equal((await client.cancel('j1')).status, 'cancelled');
  assert.equal(api().at(-1).body, undefined, 'cancel sends no body');
  assert.deepEqual(await client.jobs({ limit: 2, cursor: 'c=1' }), { jobs: [jobBody('queued')], next_cursor: null });
  assert.deepEqual(await client.jobs(), { jobs: [], next_cursor: 'n' });
  assert.deepEqual(await client.workflows(), [{ name: 'txt2img' }]);
  const err = await client.result('nope').catch((e) => e);
  assert.equal(err.code, 'not_found');
});

test('cancel retried after a lost answer returns the job when the first attempt already cancelled it', async () => {
  let n = 0;
  const { client, clock } = setup((req) => {
    if (req.method === 'GET') return json(200, { job: jobBody('cancelled') });
    n += 1;
    return n === 1 ? { fail: 'timeout' } : apiError(409, 'job_finished', 'the job is final');
  });
  await client.devLogin('alice');
  const out = track(client.cancel('j1'));
  await clock.advance(1000);
  assert.equal(out.value.status, 'cancelled');
  const direct = setup(() => apiError(409, 'job_finished', 'final'));
  assert.equal((await direct.client.cancel('j1').catch((e) => e)).code, 'job_finished');
});

// ---- watch ------------------------------------------------------------------------------

/** A job server: answers GET /v1/jobs/j1 from a list of steps (a job body, a status code, or {fail}). */
function jobRoute(steps, etagOf = (job) => `W/"${job.status}-${job.progress.percent}"`) {
  const seen = [];
  let current = null;
  const route = (req) => {
    if (req.path !== '/v1/jobs/j1' || req.method !== 'GET') return apiError(404, 'not_found');
    seen.push(req.header['If-None-Match'] || null);
    const step = steps.length > 1 ? steps.shift() : steps[0];
    if (step.fail || step.statusCode) return step;
    current = step;
    const tag = etagOf(current);
    if (req.header['If-None-Match'] === tag) return { statusCode: 304, data: '', header: { ETag: tag } };
    return json(200, { job: current }, { etag: tag });
  };
  route.seen = seen;
  return route;
}

async function loggedIn(route, options) {
  const s = setup(route, options);
  await s.client.devLogin('alice');
  s.wx.calls.length = 0;
  return s;
}

test('watch honours poll_after_ms, sends If-None-Match, does not report 304s and stops at the final state', async () => {
  const queued = jobBody('queued', { poll_after_ms: 3000 });
  const running = jobBody('running', { poll_after_ms: 500, progress: { percent: 40, node: '3', node_title: 'KSampler', value: 8, max: 20 } });
  const done = jobBody('succeeded');
  const route = jobRoute([queued, queued, running, running, running, done]);
  const { client, clock, wx } = await loggedIn(route);
  const updates = [];
  const w = track(client.watch('j1', (j) => updates.push(j.status)).done);
  await clock.advance(0);
  assert.deepEqual(updates, ['queued']);
  await clock.advance(2999);
  assert.equal(wx.calls.length, 1, 'waits poll_after_ms');
  await clock.advance(1);
  assert.deepEqual(updates, ['queued'], 'a 304 is not reported');
  await clock.advance(3000);
  assert.deepEqual(updates, ['queued', 'running']);
  await clock.advance(500);
  await clock.advance(500);
  assert.deepEqual(updates, ['queued', 'running']);
  await clock.advance(500);
  assert.deepEqual(updates, ['queued', 'running', 'succeeded']);
  assert.equal(w.value.status, 'succeeded');
  assert.deepEqual(route.seen, [null, 'W/"queued-0"', 'W/"queued-0"', 'W/"running-40"', 'W/"running-40"', 'W/"running-40"']);
  await clock.advance(60000);
  assert.equal(wx.calls.length, 6, 'no poll after the final state');
  assert.deepEqual(clock.pending(), []);
  assert.deepEqual(wx.listeners(), { hide: 0, show: 0 }, 'app hide/show handlers removed');
});

for (const status of ['succeeded', 'failed', 'cancelled']) {
  test(`watch resolves done with a ${status} job`, async () => {
    const error = status === 'failed' ? { code: 'execution_error', message: 'boom', node_id: '3', node_type: 'KSampler' } : null;
    const { client, clock } = await loggedIn(jobRoute([jobBody('running', { poll_after_ms: 500 }), jobBody(status, { error })]));
    const w = track(client.watch('j1').done);
    await clock.advance(500);
    assert.equal(w.value.status, status);
    assert.ok(isFinal(w.value));
  });
}

test('watch stops when poll_after_ms is null even without a known final status', async () => {
  const { client, clock } = await loggedIn(jobRoute([jobBody('running', { poll_after_ms: null })]));
  const w = track(client.watch('j1').done);
  await clock.advance(0);
  assert.equal(w.value.status, 'running');
  assert.deepEqual(clock.pending(), []);
});

test('watch backs off on 429 and 503 by Retry-After', async () => {
  const running = jobBody('running', { poll_after_ms: 500 });
  const route = jobRoute([
    running,
    apiError(429, 'rate_limited', 'slow', undefined, { 'Retry-After': '7' }),
    apiError(503, 'database_unavailable', 'db', undefined, { 'Retry-After': '3' }),
    jobBody('succeeded'),
  ]);
  const { client, clock, wx } = await loggedIn(route);
  const w = track(client.watch('j1').done);
  await clock.advance(500);
  assert.equal(wx.calls.length, 2);
  await clock.advance(6999);
  assert.equal(wx.calls.length, 2, 'waits the 429\'s Retry-After');
  await clock.advance(1);
  assert.equal(wx.calls.length, 3);
  await clock.advance(2999);
  assert.equal(wx.calls.length, 3, 'waits the 503\'s Retry-After');
  await clock.advance(1);
  assert.equal(w.value.status, 'succeeded');
});

test('watch backs off exponentially with jitter on network errors, recovers, and gives up after maxPollErrors', async () => {
  const jitter = [0, 0.5, 1];
  const route = jobRoute([jobBody('running', { poll_after_ms: 500 }), { fail: 'timeout' }, { fail: 'timeout' }, { fail: 'timeout' },
    jobBody('running', { poll_after_ms: 500, progress: { percent: 50, node: '3', node_title: 'KSampler', value: 1, max: 2 } }),
    { fail: 'timeout' }]);
  const { client, clock, wx } = await loggedIn(route, { clientOptions: { random: () => (jitter.length ? jitter.shift() : 0), maxPollErrors: 3 } });
  const updates = [];
  const w = track(client.watch('j1', (j) => updates.push(j.progress.percent)).done);
  await clock.advance(500); // first failure
  await clock.advance(250 + 750 + 2000); // backoffs: 500*(0.5+0/2), 1000*(0.5+0.5/2), 2000*(0.5+1/2)
  const at = wx.calls.map((c) => c.at - START);
  assert.deepEqual(at, [0, 500, 750, 1500, 3500]);
  assert.deepEqual(updates, [0, 50], 'recovered');
  // Now failing for good: after the reset, 3 tolerated failures, the 4th rejects done.
  await clock.advance(500 + 250 + 500 + 1000 + 2000);
  assert.ok(w.error instanceof GatewayError);
  assert.equal(w.error.code, 'network_error');
  assert.deepEqual(clock.pending(), []);
});

test('watch pauses while the app is hidden and polls again at once when it is shown', async () => {
  const route = jobRoute([jobBody('queued', { poll_after_ms: 1000 }), jobBody('running', { poll_after_ms: 500 }), jobBody('succeeded')]);
  const { client, clock, wx } = await loggedIn(route);
  const updates = [];
  const w = track(client.watch('j1', (j) => updates.push(j.status)).done);
  await clock.advance(0);
  wx.hideApp();
  await clock.advance(10 * 60 * 1000);
  assert.equal(wx.calls.length, 1, 'no poll while hidden');
  assert.deepEqual(clock.pending(), []);
  wx.showApp();
  await clock.advance(0);
  assert.equal(wx.calls.length, 2, 'polled on show without waiting');
  assert.deepEqual(updates, ['queued', 'running']);
  await clock.advance(500);
  assert.equal(w.value.status, 'succeeded');
  assert.deepEqual(wx.offCalls.sort(), ['hide', 'show']);
});

test('watch: hidden while a poll is in flight, the next poll waits for show', async () => {
  let release;
  const gate = new Promise((r) => { release = r; });
  const base = jobRoute([jobBody('running', { poll_after_ms: 500 }), jobBody('succeeded')]);
  const { client, clock, wx } = await loggedIn(base);
  const realRequest = wx.request;
  wx.request = (opts) => gate.then(() => realRequest(opts));
  const w = track(client.watch('j1').done);
  wx.hideApp();
  release();
  await clock.advance(5000);
  wx.request = realRequest;
  assert.equal(wx.calls.length, 1);
  assert.deepEqual(clock.pending(), []);
  wx.showApp();
  await clock.advance(0);
  assert.equal(w.value.status, 'succeeded');
});

test('stop() ends polling at once, unregisters, and done resolves with the last job seen', async () => {
  const { client, clock, wx } = await loggedIn(jobRoute([jobBody('running', { poll_after_ms: 500 })]));
  const w = client.watch('j1', () => {});
  const out = track(w.done);
  await clock.advance(0);
  w.stop();
  w.stop();
  await clock.advance(10000);
  assert.equal(wx.calls.length, 1);
  assert.equal(out.value.status, 'running');
  assert.deepEqual(clock.pending(), []);
  assert.deepEqual(wx.listeners(), { hide: 0, show: 0 });
});

test('stop() while a poll is in flight: its answer is dropped; stop() from onUpdate works too', async () => {
  const { client, clock, wx } = await loggedIn(jobRoute([jobBody('running', { poll_after_ms: 500 })]));
  const updates = [];
  const w = client.watch('j1', (j) => updates.push(j));
  w.stop();
  const out = track(w.done);
  await clock.advance(5000);
  assert.deepEqual(updates, []);
  assert.equal(out.value, null);
  assert.equal(wx.calls.length, 1);

  const again = client.watch('j1', (j) => { updates.push(j); again.stop(); });
  const second = track(again.done);
  await clock.advance(5000);
  assert.equal(updates.length, 1);
  assert.equal(second.value.status, 'running');
});

test('watch with an AbortSignal: abort stops it; an aborted signal never polls', async () => {
  const { client, clock, wx } = await loggedIn(jobRoute([jobBody('running', { poll_after_ms: 500 })]));
  const ctl = new AbortController();
  const out = track(client.watch('j1', null, { signal: ctl.signal }).done);
  await clock.advance(1200);
  assert.equal(wx.calls.length, 3);
  ctl.abort();
  await clock.advance(5000);
  assert.equal(wx.calls.length, 3);
  assert.equal(out.value.status, 'running');
  const early = track(client.watch('j1', null, { signal: AbortSignal.abort() }).done);
  await clock.advance(1000);
  assert.equal(early.value, null);
  assert.equal(wx.calls.length, 3);
});

test('watch rejects done on an error it cannot get past (404), and on an exception in onUpdate', async () => {
  const { client, clock } = await loggedIn(() => apiError(404, 'not_found', 'no such job'));
  const out = track(client.watch('j1', () => {}).done);
  await clock.advance(0);
  assert.equal(out.error.code, 'not_found');
  assert.equal(out.error.status, 404);
  const s = await loggedIn(jobRoute([jobBody('running', { poll_after_ms: 500 })]));
  const boom = new Error('bad onUpdate');
  const thrown = track(s.client.watch('j1', () => { throw boom; }).done);
  await s.clock.advance(0);
  assert.equal(thrown.error, boom);
});

test('watch renews an expired token (401 token_expired) and keeps polling', async () => {
  const route = jobRoute([jobBody('running', { poll_after_ms: 500 }), jobBody('succeeded')]);
  const { client, clock, logins } = await loggedIn((req) => (req.header.Authorization === 'Bearer tok1' && req.at > START
    ? apiError(401, 'token_expired') : route(req)));
  const w = track(client.watch('j1').done);
  await clock.advance(500);
  assert.equal(w.value.status, 'succeeded');
  assert.equal(logins(), 2);
});

// ---- the example requires the library where its README says to copy it ------------------------

test('the example mini-program requires the library from utils/gateway.js, the documented copy', () => {
  const example = path.join(__dirname, '..', 'example');
  for (const file of ['app.js', path.join('pages', 'index', 'index.js')]) {
    const code = fs.readFileSync(path.join(example, file), 'utf8');
    assert.match(code, /require\('(\.\/|\.\.\/\.\.\/)utils\/gateway\.js'\)/, file);
  }
  const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');
  assert.ok(readme.includes('cp clients/miniprogram/index.js clients/miniprogram/example/utils/gateway.js'));
  const ignored = fs.readFileSync(path.join(example, 'utils', '.gitignore'), 'utf8');
  assert.match(ignored, /^gateway\.js$/m);
});

test('settle helper sanity: the harness delivers answers asynchronously', async () => {
  let delivered = false;
  const wx = fakeWx(() => json(200, {}));
  wx.request({ url: BASE + '/x', method: 'GET', header: {}, success: () => { delivered = true; }, fail: () => {} });
  assert.equal(delivered, false);
  await settle();
  assert.equal(delivered, true);
});
