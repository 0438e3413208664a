-- perdure SQLite schema, version 5: blobs.

-- Payloads above the store's blob threshold live in files beside the database
-- (<database>.blobs/, see perdure/store/_blobs.py): nothing in the schema changes. The version
-- is kept so both backends count their migrations alike.
