/** The typed API client: openapi-fetch over the generated schema (`npm run gen:api`). */
import createClient, { type Middleware } from "openapi-fetch";
import type { components, paths } from "@/api/schema";
import { useAuth } from "@/stores/auth";

export type Schemas = components["schemas"];

/** An error answer of the API (problem+json, see src/tesai/errors.py). */
export class ApiError extends Error {
  readonly status: number;
  readonly problem: Record<string, unknown>;
  constructor(status: number, problem: Record<string, unknown>) {
    super(problemMessage(status, problem));
    this.name = "ApiError";
    this.status = status;
    this.problem = problem;
  }
}

function problemMessage(status: number, problem: Record<string, unknown>): string {
  if (typeof problem.detail === "string" && problem.detail) return problem.detail;
  if (Array.isArray(problem.detail)) {
    // FastAPI validation errors: [{loc, msg}]
    return problem.detail
      .map((d: { loc?: unknown[]; msg?: string }) => `${(d.loc ?? []).slice(1).join(".")}: ${d.msg ?? ""}`)
      .join("; ");
  }
  if (Array.isArray(problem.errors) && problem.errors.length) {
    return problem.errors
      .map((d: { loc?: unknown[]; msg?: string; field?: string }) => `${d.field ?? (d.loc ?? []).slice(1).join(".")}: ${d.msg ?? ""}`)
      .join("; ");
  }
  if (typeof problem.title === "string") return problem.title;
  return `Request failed (${status})`;
}

const retryable = new Map<string, Request>();

const authMiddleware: Middleware = {
  onRequest({ request, id }) {
    const token = useAuth.getState().accessToken;
    if (token && !request.headers.has("Authorization")) request.headers.set("Authorization", `Bearer ${token}`);
    if (useAuth.getState().refreshToken) retryable.set(id, request.clone());
    return request;
  },
  async onResponse({ response, id }) {
    const original = retryable.get(id);
    retryable.delete(id);
    if (response.status !== 401 || !original) return response;
    // The access token expired: refresh once, then repeat the request with the new token.
    if (!(await useAuth.getState().refresh())) return response;
    const retry = new Request(original);
    retry.headers.set("Authorization", `Bearer ${useAuth.getState().accessToken}`);
    return fetch(retry);
  },
};

export const api = createClient<paths>({ baseUrl: "" });
api.use(authMiddleware);

/** The data of an openapi-fetch result, or throw its error as an ApiError. */
export async function unwrap<T>(
  promise: Promise<{ data?: T; error?: unknown; response: Response }>,
): Promise<T> {
  const { data, error, response } = await promise;
  if (error !== undefined || !response.ok) {
    const problem = (error && typeof error === "object" ? error : { detail: String(error ?? "") }) as Record<string, unknown>;
    throw new ApiError(response.status, problem);
  }
  return data as T;
}

/** A raw authenticated fetch (CSV downloads, log streams): same token handling as `api`. */
export async function authFetch(path: string, init: RequestInit = {}): Promise<Response> {
  const send = () => {
    const headers = new Headers(init.headers);
    const token = useAuth.getState().accessToken;
    if (token) headers.set("Authorization", `Bearer ${token}`);
    return fetch(path, { ...init, headers });
  };
  let response = await send();
  if (response.status === 401 && (await useAuth.getState().refresh())) response = await send();
  return response;
}

/** Save a response body as a file (CSV exports). */
export async function download(path: string, filename: string): Promise<void> {
  const response = await authFetch(path);
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => ({})));
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  URL.revokeObjectURL(url);
}
