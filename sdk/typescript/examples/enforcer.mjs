// A complete runtime: follows the `payments` namespace, keeps the active
// card limits in memory, refuses a state whose limits make no sense, and
// survives restarts and outages with its cache.
//
//   POLICYHUB_SERVER=http://127.0.0.1:50051 POLICYHUB_TOKEN_FILE=runtime.token \
//     node examples/enforcer.mjs [--once]
//
// With --once it stops after the first state put in force (as an init
// container would, to start its application with verified limits).

import { Subscription, tokenFile } from "@policyhub/runtime";

const once = process.argv.includes("--once");
const subscription = new Subscription({
  endpoints: (process.env.POLICYHUB_SERVER ?? "http://127.0.0.1:50051").split(","),
  namespace: "payments",
  names: ["card-limits"],
  runtime: { id: process.env.HOSTNAME ?? "enforcer-1", labels: { region: "eu" } },
  token: tokenFile(process.env.POLICYHUB_TOKEN_FILE ?? "runtime.token"),
  cacheDir: "cache",
  // The application's own validation: refusing reports REJECTED and keeps
  // the previous limits in force.
  validate: (state) => {
    const limits = state.bundles["card-limits"];
    if (limits !== undefined && !Number.isInteger(limits.body.maxAmount)) {
      return "maxAmount must be a whole number";
    }
    return undefined;
  },
});

follow: for await (const event of subscription.events()) {
  switch (event.type) {
    case "applied":
    case "fromCache": {
      const limits = event.state.bundles["card-limits"];
      const from = event.state.source === "cache" ? " (cached)" : "";
      console.log(`revision ${event.state.revision}: up to ${limits?.body.maxAmount}${from}`);
      // Leaving the loop stops the subscription.
      if (once) break follow;
      break;
    }
    case "rejected":
      console.error(`kept the last limits: ${event.revision}: ${event.reason}`);
      break;
    case "disconnected":
      console.error(`lost the server (${event.reason}); retrying in ${Math.round(event.retryInMs)} ms`);
      break;
  }
}
