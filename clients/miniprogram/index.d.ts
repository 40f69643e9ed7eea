// Types of the comfy-gateway mini-program client (index.js). The contract is docs/API.md.

/** Codes of docs/API.md, plus the library's own: network_error, bad_response, login_failed. */
export type ErrorCode =
  | 'invalid_json' | 'invalid_params' | 'unknown_workflow' | 'invalid_upload'
  | 'unauthorized' | 'invalid_code' | 'token_expired'
  | 'forbidden' | 'not_found' | 'method_not_allowed'
  | 'idempotency_conflict' | 'job_not_finished' | 'job_failed' | 'job_cancelled' | 'job_finished'
  | 'payload_too_large' | 'workflow_rejected' | 'content_rejected'
  | 'rate_limited' | 'quota_exceeded' | 'too_many_active_jobs'
  | 'backend_unavailable' | 'storage_unavailable' | 'database_unavailable' | 'internal_error'
  | 'network_error' | 'bad_response' | 'login_failed'
  | (string & {});

export declare class GatewayError extends Error {
  constructor(code: ErrorCode, message?: string,
              options?: { status?: number; details?: unknown; retryAfter?: number | null; cause?: unknown });
  name: 'GatewayError';
  /** The contract's error code (stable, machine-readable). */
  code: ErrorCode;
  /** For humans. */
  message: string;
  /** The contract's `details`, or null. */
  details: any;
  /** HTTP status; 0 when no answer came (network_error, login_failed). */
  status: number;
  /** Seconds from the Retry-After header, or null. */
  retryAfter: number | null;
  cause?: unknown;
}

export type JobStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface JobProgress {
  percent: number;
  node: string | null;
  node_title: string | null;
  value: number;
  max: number;
}

export interface JobError {
  code: 'execution_error' | 'backend_lost' | 'timeout' | 'output_copy_failed' | 'content_rejected' | (string & {});
  message: string;
  node_id?: string | null;
  node_type?: string | null;
}

export interface Job {
  id: string;
  workflow: string;
  status: JobStatus;
  queue_position: number | null;
  eta_seconds: number | null;
  progress: JobProgress;
  preview_url: string | null;
  error: JobError | null;
  params: Record<string, unknown>;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  /** How long to wait before the next poll; null once final. */
  poll_after_ms: number | null;
}

export interface ParamSpec {
  type: 'string' | 'integer' | 'number' | 'boolean';
  title?: string;
  description?: string;
  required?: boolean;
  default?: unknown;
  minimum?: number;
  maximum?: number;
  multiple_of?: number;
  max_length?: number;
  enum?: unknown[];
}

export interface Workflow {
  name: string;
  title: string;
  description?: string;
  available?: boolean;
  params: Record<string, ParamSpec>;
  inputs: Record<string, { required?: boolean; description?: string }>;
}

export interface ResultImage {
  url: string;
  expires_at: string;
  content_type: string;
  bytes: number;
  width: number;
  height: number;
  node_id: string;
  index: number;
}

export interface JobResult {
  job_id: string;
  images: ResultImage[];
}

export interface JobPage {
  jobs: Job[];
  next_cursor: string | null;
}

export interface LoginResult {
  token: string;
  expires_at: string;
  user: { id: string; [k: string]: unknown } | null;
}

/** What the client needs of wx (or uni / Taro). */
export interface WxLike {
  request(options: {
    url: string; method: string; header: Record<string, string>; data?: string;
    dataType: 'json'; responseType: 'text'; timeout: number;
    success(res: { statusCode: number; data: unknown; header?: Record<string, string> }): void;
    fail(err: { errMsg?: string }): void;
  }): unknown;
  uploadFile?(options: {
    url: string; filePath: string; name: string; formData: Record<string, string>; timeout: number;
    success(res: { statusCode: number; data: string }): void;
    fail(err: { errMsg?: string }): void;
  }): unknown;
  login?(options: { success(res: { code?: string; errMsg?: string }): void; fail(err: { errMsg?: string }): void }): void;
  getStorageSync?(key: string): any;
  setStorageSync?(key: string, value: any): void;
  removeStorageSync?(key: string): void;
  onAppHide?(fn: () => void): void;
  onAppShow?(fn: () => void): void;
  offAppHide?(fn: () => void): void;
  offAppShow?(fn: () => void): void;
}

/** Web Storage-like: where the session is kept. Values are strings. */
export interface SessionStorage {
  getItem(key: string): string | null | undefined;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface ClientOptions {
  /** The API's base URL, e.g. https://api.example.com (no trailing /v1). */
  baseUrl: string;
  /** wx, uni or Taro; defaults to the global wx. */
  wx?: WxLike;
  /** Where the token is kept: default wx.setStorageSync; false for memory only. */
  storage?: SessionStorage | false | null;
  /** Storage key (default 'comfy-gateway:session'). */
  storageKey?: string;
  /** ms per wx.request (default 15000). */
  timeout?: number;
  /** ms per wx.uploadFile (default 60000). */
  uploadTimeout?: number;
  /** Retries of one call after network errors or 503 with Retry-After (default 3). */
  maxRetries?: number;
  /** First backoff step in ms (default 500); doubles per attempt. */
  backoffBaseMs?: number;
  /** Largest backoff in ms (default 30000). */
  backoffMaxMs?: number;
  /** Longest Retry-After (seconds) a call waits for before giving up (default 60). */
  maxRetryAfter?: number;
  /** Renew the token this many ms before it expires (default 300000; at most half its lifetime). */
  renewBeforeMs?: number;
  /** Consecutive failed polls watch() gets past before done rejects (default 10). */
  maxPollErrors?: number;
  setTimeout?: (fn: () => void, ms: number) => any;
  clearTimeout?: (id: any) => void;
  /** Wall-clock ms, like Date.now. */
  now?: () => number;
  /** In [0, 1), like Math.random (backoff jitter). */
  random?: () => number;
}

/** Anything with `aborted` and addEventListener('abort', fn), e.g. an AbortSignal. */
export interface SignalLike {
  readonly aborted: boolean;
  addEventListener(type: 'abort', fn: () => void): void;
  removeEventListener(type: 'abort', fn: () => void): void;
}

export interface Watch {
  /** Stop polling; done resolves with the last job seen (or null). */
  stop(): void;
  /** The final job; after stop(), the last job seen (not final) or null. Rejects with a GatewayError. */
  done: Promise<Job | null>;
}

export interface Client {
  /** wx.login, then POST /v1/auth/wechat; keeps the token. */
  login(): Promise<LoginResult>;
  /** POST /v1/auth/dev (only with DEV_LOGIN=1 on the gateway); keeps the token. */
  devLogin(user: string): Promise<LoginResult>;
  /** Forget the token (memory and storage). */
  logout(): void;
  /** The logged-in user, or null. */
  user(): { id: string; [k: string]: unknown } | null;
  /** POST /v1/uploads then wx.uploadFile; resolves with the upload id for submit's inputs. */
  upload(filePath: string, options: { contentType: 'image/png' | 'image/jpeg' | 'image/webp'; size?: number }): Promise<string>;
  /** POST /v1/jobs with an Idempotency-Key (made when not given, the same across retries). */
  submit(workflow: string, params?: Record<string, unknown>,
         options?: { inputs?: Record<string, string>; idempotencyKey?: string; notify?: boolean }): Promise<Job>;
  /** GET /v1/jobs/{id} once. */
  job(jobId: string): Promise<Job>;
  /** Poll until final; onUpdate is called for every change (never for a 304). */
  watch(jobId: string, onUpdate?: (job: Job) => void, options?: { signal?: SignalLike }): Watch;
  /** GET /v1/jobs/{id}/result: freshly signed image URLs. */
  result(jobId: string): Promise<JobResult>;
  /** POST /v1/jobs/{id}/cancel. */
  cancel(jobId: string): Promise<Job>;
  /** GET /v1/jobs: the user's jobs, newest first. */
  jobs(options?: { limit?: number; cursor?: string | null }): Promise<JobPage>;
  /** GET /v1/workflows. */
  workflows(): Promise<Workflow[]>;
}

export declare function createClient(options: ClientOptions): Client;
export declare function isFinal(job: Pick<Job, 'status'> | null | undefined): boolean;
export declare function newIdempotencyKey(): string;
