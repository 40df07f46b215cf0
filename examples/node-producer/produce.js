// A game server's side of the wallet contract, in Node.js with kafkajs, without any of the
// wallet's Python code: publish one command, then wait for the reply that carries its
// command_id. Usage:
//   node produce.js TYPE USER ASSET AMOUNT [IDEMPOTENCY_KEY]
//   (TYPE is top_up, bonus or spend; the key defaults to a new UUID, so a retry must pass it)
// Environment: KAFKA_BOOTSTRAP (default localhost:9092), COMMANDS_TOPIC, REPLIES_TOPIC,
// REPLY_TIMEOUT_MS. Prints the reply as one JSON line; exits 1 when no reply came in time.
"use strict";

const crypto = require("node:crypto");
const { Kafka, Partitioners, logLevel } = require("kafkajs");

const brokers = (process.env.KAFKA_BOOTSTRAP || "localhost:9092").split(",");
const commandsTopic = process.env.COMMANDS_TOPIC || "wallet.commands";
const repliesTopic = process.env.REPLIES_TOPIC || "wallet.replies";
const replyTimeoutMs = Number(process.env.REPLY_TIMEOUT_MS || 30000);

function buildCommand([type, userId, asset, amount, idempotencyKey]) {
  if (!type || !userId || !asset || !amount) {
    throw new Error("usage: node produce.js TYPE USER ASSET AMOUNT [IDEMPOTENCY_KEY]");
  }
  return {
    command_id: crypto.randomUUID(), // the correlation id the reply carries back
    idempotency_key: idempotencyKey || crypto.randomUUID(),
    type,
    user_id: userId,
    asset,
    amount: Number.parseInt(amount, 10), // integer minor units; "5" or 1.5 would be refused
    reply_to: repliesTopic,
    sent_at: new Date().toISOString(),
  };
}

// Start reading the replies at the end of the topic as it is *before* the command is sent,
// so the reply cannot be missed. (The embedded broker may answer a little short of the end;
// the few older replies read then are skipped by their command_id.)
async function watchReplies(kafka, commandId) {
  const admin = kafka.admin();
  await admin.connect();
  const ends = await admin.fetchTopicOffsets(repliesTopic);
  await admin.disconnect();
  // A group of its own, alone in it. Short timeouts: the embedded broker holds a new group's
  // join for half the session timeout (15 s with kafkajs's default 30 s; measured), Kafka for
  // group.initial.rebalance.delay.ms. A game server would keep one long-lived consumer (one
  // group per server) for all its replies and pay the join once.
  const consumer = kafka.consumer({
    groupId: `node-producer-${commandId}`,
    sessionTimeout: 6000, // Kafka's smallest allowed by default
    rebalanceTimeout: 3000,
    maxWaitTimeInMs: 250,
  });
  await consumer.connect();
  await consumer.subscribe({ topic: repliesTopic });
  let resolveReply;
  const reply = new Promise((resolve) => (resolveReply = resolve));
  await consumer.run({
    eachMessage: async ({ message }) => {
      const body = JSON.parse(message.value.toString("utf8"));
      if (body.command_id === commandId) resolveReply(body); // at-least-once: first one wins
    },
  });
  for (const { partition, high } of ends) {
    consumer.seek({ topic: repliesTopic, partition, offset: high });
  }
  return { consumer, reply };
}

async function main() {
  const command = buildCommand(process.argv.slice(2));
  const kafka = new Kafka({ clientId: "node-game-server", brokers, logLevel: logLevel.WARN });
  const { consumer, reply } = await watchReplies(kafka, command.command_id);
  // Key = the user id, default (murmur2) partitioner: the partition the processor expects.
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  await producer.send({
    topic: commandsTopic,
    messages: [{ key: command.user_id, value: JSON.stringify(command) }],
  });
  await producer.disconnect();
  let timer;
  const timeout = new Promise((resolve) => (timer = setTimeout(resolve, replyTimeoutMs, null)));
  const answer = await Promise.race([reply, timeout]);
  clearTimeout(timer);
  await consumer.disconnect();
  if (answer === null) {
    console.error(`no reply to ${command.command_id} within ${replyTimeoutMs} ms`);
    process.exit(1);
  }
  console.log(JSON.stringify(answer));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
