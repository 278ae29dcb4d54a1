import { InMemoryMembershipStore } from "../adapters/index.js";
import { testMembershipStore } from "../adapters/testing/index.js";

testMembershipStore("InMemoryMembershipStore", { create: () => new InMemoryMembershipStore() });
