export type {
  AddToGroupOptions,
  ChangeFeed,
  Membership,
  MembershipChange,
  MembershipErrorCode,
  MembershipGrant,
  MembershipStore,
  MembershipUpdate,
} from "./contract.js";
export { MembershipError } from "./contract.js";
export {
  type ChangeAppliedEvent,
  diagnostics,
  type FeedEvent,
  type RehydrateEvent,
  type ResyncEvent,
  type SlowConsumerEvent,
  type StorageRequestEvent,
} from "./diagnostics.js";
export type {
  GroupResume,
  HistoryMark,
  HistoryMessage,
  HistoryRead,
  MessageHistory,
  Position,
  ResumeRequest,
} from "./history/history.js";
export { type HistoryLimits, MemoryHistory, type MemoryHistoryOptions } from "./history/memory.js";
export { MAX_POSITIONS, parseResume, replayable, resumeGroups } from "./history/resume.js";
export { MemoryPresence } from "./presence/memory.js";
export {
  MAX_ONLINE_PAGE,
  type OnlinePage,
  type OnlineQuery,
  type Presence,
  type PresenceCount,
  type PresenceEvent,
  type PresenceSource,
  type PresenceView,
} from "./presence/presence.js";
export { type Grant, isLive, MembershipStoreBase } from "./store-base.js";
export {
  AzureTableMembershipStore,
  type AzureTableMembershipStoreOptions,
  ChangeFeedMismatchError,
  type MembershipPair,
  type RepairReport,
  type TableCredential,
} from "./stores/azure-table.js";
export { InMemoryMembershipStore } from "./stores/memory.js";
export {
  type HubBinding,
  type JoinReason,
  type LeaveReason,
  MembershipSync,
  type MembershipSyncOptions,
} from "./sync/membership-sync.js";
export { isValidName, MAX_NAME_LENGTH } from "./validate.js";
