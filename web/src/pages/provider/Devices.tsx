import { useQuery } from "@tanstack/react-query";
import { ButtonLink } from "@/components/Button";
import { PageHeader, Stat } from "@/components/Card";
import { EmptyState, QueryView } from "@/components/States";
import { DevicesTable, statusCounts } from "./DevicesTable";
import { fetchDevices, keys } from "./queries";

export default function Devices() {
  const query = useQuery({ queryKey: keys.devices, queryFn: fetchDevices, refetchInterval: 3000 });
  return (
    <div className="space-y-6">
      <PageHeader
        title="Devices"
        description="Your machines in the pool. Status updates live."
        actions={<ButtonLink to="/provider/devices/new">Add device</ButtonLink>}
      />
      <QueryView query={query} loadingLabel="Loading your devices…">
        {(devices) => {
          if (devices.length === 0) {
            return (
              <EmptyState title="No devices yet" action={<ButtonLink to="/provider/devices/new">Add your first device</ButtonLink>}>
                Add a device to get a join command, run it on your GPU host, and it joins the pool once verified.
              </EmptyState>
            );
          }
          const counts = statusCounts(devices);
          const gpus = devices.filter((d) => d.status === "online" || d.status === "busy").reduce((n, d) => n + d.gpu_count, 0);
          return (
            <>
              <div className="grid grid-cols-2 gap-3 sm:grid-cols-4">
                <Stat label="Devices" value={devices.length} />
                <Stat label="Online" value={(counts.online ?? 0) + (counts.busy ?? 0)} hint={`${counts.busy ?? 0} rented`} />
                <Stat label="GPUs listed" value={gpus} />
                <Stat label="Need attention" value={(counts.offline ?? 0) + (counts.rejected ?? 0)} hint="offline or rejected" />
              </div>
              <DevicesTable devices={devices} />
            </>
          );
        }}
      </QueryView>
    </div>
  );
}
