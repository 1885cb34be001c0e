import { ButtonLink } from "@/components/Button";
import { formatFeeBps, formatUsdc } from "@/components/money";
import { useAuth } from "@/stores/auth";
import { usePool, type PoolStats } from "./usePool";

const features = [
  { title: "Ray clusters in a minute", text: "Pick GPUs, get a price that holds, deploy. Submit jobs and follow their logs here or with plain Ray tooling." },
  { title: "Verified machines", text: "Every machine proves its compute before it is listed, and keeps proving it: you see its score and uptime." },
  { title: "Pay by the second, in USDC", text: "Deposit with Solana Pay. Set a budget per cluster and a monthly spend cap; unused holds come back." },
  { title: "Earn with your GPUs", text: "Run one join command; your machine joins the pool, is verified and starts earning. Withdraw to your wallet." },
];

/** The cheapest listed price online, per GPU-hour when a GPU is online, else per node-hour of
 *  a CPU device (a pool of CPU devices alone still has a price). */
function cheapestListed(pool: PoolStats): { micro: number; unit: string } | null {
  const gpu = pool.by_model_region.reduce<number | null>((m, g) => (m === null || g.min_price_per_gpu_hour_micro < m ? g.min_price_per_gpu_hour_micro : m), null);
  if (gpu !== null) return { micro: gpu, unit: "GPU·h" };
  const cpu = pool.min_cpu_price_per_hour_micro;
  return cpu === null || cpu === undefined ? null : { micro: cpu, unit: "node·h" };
}

export default function Landing() {
  const { query } = usePool(10000);
  const user = useAuth((s) => s.user);
  const pool = query.data;
  const from = pool ? cheapestListed(pool) : null;
  return (
    <div className="space-y-12">
      <section className="rounded-2xl bg-gradient-to-br from-slate-900 to-brand-700 px-6 py-12 text-white sm:px-10">
        <h1 className="max-w-2xl text-3xl font-bold sm:text-5xl">Rent secured Ray clusters from an open pool of GPUs.</h1>
        <p className="mt-4 max-w-2xl text-lg text-slate-100">TES AI turns other people's idle GPUs into verified, per-second-billed Ray clusters. Bring a Python script; leave with results.</p>
        <div className="mt-8 flex flex-wrap gap-3">
          <ButtonLink to={user ? "/app/deploy" : "/signup"} variant="light-on-dark">
            {user ? "Deploy a cluster" : "Start renting"}
          </ButtonLink>
          <ButtonLink to="/signup?role=provider" variant="outline-on-dark">
            Provide GPUs
          </ButtonLink>
          <ButtonLink to="/pool" variant="ghost-on-dark">
            See the live pool →
          </ButtonLink>
        </div>
        <dl className="mt-10 grid max-w-2xl grid-cols-3 gap-4" aria-live="polite">
          <div>
            <dt className="text-sm text-slate-200">GPUs online</dt>
            <dd className="text-2xl font-semibold" data-testid="landing-gpus">{pool ? pool.gpus_online : "…"}</dd>
          </div>
          <div>
            <dt className="text-sm text-slate-200">Machines online</dt>
            <dd className="text-2xl font-semibold">{pool ? pool.gpu_devices_online + pool.cpu_devices_online : "…"}</dd>
          </div>
          <div>
            <dt className="text-sm text-slate-200">From</dt>
            {/* The unit on a line of its own: "$1.00/node·h" in one piece is wider than a third of
                a phone's width. */}
            <dd className="text-2xl font-semibold" data-testid="landing-from">
              {from ? formatUsdc(from.micro) : pool ? "—" : "…"}
            </dd>
            {from && (
              <dd className="text-xs text-slate-200" data-testid="landing-from-unit">
                per {from.unit}, listed{pool?.platform_fee_bps ? `; + ${formatFeeBps(pool.platform_fee_bps)} platform fee` : ""}
              </dd>
            )}
          </div>
        </dl>
      </section>
      <section aria-labelledby="how" className="grid gap-4 sm:grid-cols-2">
        <h2 id="how" className="sr-only">
          How it works
        </h2>
        {features.map((f) => (
          <div key={f.title} className="rounded-lg border border-slate-200 bg-white p-5">
            <h3 className="font-semibold text-slate-900">{f.title}</h3>
            <p className="mt-2 text-sm text-slate-700">{f.text}</p>
          </div>
        ))}
      </section>
    </div>
  );
}
