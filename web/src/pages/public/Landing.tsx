import { ButtonLink } from "@/components/Button";
import { formatRate } from "@/components/money";
import { useAuth } from "@/stores/auth";
import { usePool } from "./usePool";

const features = [
  { title: "Ray clusters in a minute", text: "Pick GPUs, get a price that holds, deploy. Submit jobs and follow their logs here or with plain Ray tooling." },
  { title: "Verified machines", text: "Every machine proves its compute before it is listed, and keeps proving it: you see its score and uptime." },
  { title: "Pay by the second, in USDC", text: "Deposit with Solana Pay. Set a budget per cluster and a monthly spend cap; unused holds come back." },
  { title: "Earn with your GPUs", text: "Run one join command; your machine joins the pool, is verified and starts earning. Withdraw to your wallet." },
];

export default function Landing() {
  const { query } = usePool(10000);
  const user = useAuth((s) => s.user);
  const pool = query.data;
  const cheapest = pool?.by_model_region.reduce<number | null>((m, g) => (m === null || g.min_price_per_gpu_hour_micro < m ? g.min_price_per_gpu_hour_micro : m), null);
  return (
    <div className="space-y-12">
      <section className="rounded-2xl bg-gradient-to-br from-slate-900 to-brand-700 px-6 py-12 text-white sm:px-10">
        <h1 className="max-w-2xl text-3xl font-bold sm:text-5xl">Rent secured Ray clusters from an open pool of GPUs.</h1>
        <p className="mt-4 max-w-2xl text-lg text-slate-100">TES AI turns other people's idle GPUs into verified, per-second-billed Ray clusters. Bring a Python script; leave with results.</p>
        <div className="mt-8 flex flex-wrap gap-3">
          <ButtonLink to={user ? "/app/deploy" : "/signup"} className="bg-white !text-slate-900 hover:bg-slate-100">
            {user ? "Deploy a cluster" : "Start renting"}
          </ButtonLink>
          <ButtonLink to="/signup?role=provider" variant="secondary" className="border-white/60 bg-transparent !text-white hover:bg-white/10">
            Provide GPUs
          </ButtonLink>
          <ButtonLink to="/pool" variant="ghost" className="!text-white hover:bg-white/10">
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
            <dd className="text-2xl font-semibold">{cheapest !== null && cheapest !== undefined ? formatRate(cheapest, "GPU·h") : "—"}</dd>
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
