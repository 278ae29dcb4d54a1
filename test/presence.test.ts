import { MemoryPresence } from "../adapters/index.js";
import { testPresence } from "../adapters/testing/index.js";

testPresence("MemoryPresence", {
  async create() {
    const presence = new MemoryPresence();
    return [presence, presence];
  },
});
