// The TypeScript runtime's follower for the runtimes benchmark (`cargo
// bench --bench runtimes`): opens COUNT subscriptions to a namespace and, in
// each one's callback, writes `<index> <revision>`.
//
//   node examples/follow.mjs http://127.0.0.1:50051 payments 100

import { Subscription } from "@policyhub/runtime";

const [server, namespace, count] = process.argv.slice(2);
await Promise.all(
  Array.from({ length: Number(count) }, (_, index) =>
    new Subscription({ endpoints: [server], namespace }).watch((event) => {
      if (event.type === "applied" || event.type === "fromCache") {
        process.stdout.write(`${index} ${event.state.revision}\n`);
      }
    }),
  ),
);
