"""A chain client over LiteSVM: the real Solana runtime (SPL Token, ATA) in this process.

LiteSVM executes and signs-checks transactions exactly like a validator but keeps no index
by address, so this client remembers every transaction that landed through it (signature →
message) to answer ``signatures_for_address`` and ``get_transaction``; balances and
success come from the SVM itself. Transactions land at once, so every one that landed is
``finalized``. Used by tests and for local experiments; never in production.

LiteSVM accepts only its latest blockhash. The client models block height on that: the
height goes up by one whenever the SVM's blockhash changes (``expire_blockhash``), and a
blockhash is valid up to the height it was handed out at, so "past its last valid block
height" means exactly "LiteSVM would now refuse it".

In solders 0.29 ``FailedTransactionMetadata.err`` and ``.meta`` are methods, not
properties: ``error_text`` calls them.
"""

from __future__ import annotations

from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountParams, create_account
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata
from solders.transaction_status import TransactionErrorFieldless
from spl.token import instructions as spl
from spl.token._layouts import ACCOUNT_LAYOUT
from spl.token.constants import MINT_LEN, TOKEN_PROGRAM_ID
from spl.token.models import InitializeMintParams, MintToParams, TransferCheckedParams

from tesai.chain.base import (
    ChainClient,
    ChainTransaction,
    RawInstruction,
    SendResult,
    SignedTransfer,
    parse_token_transfers,
)


def error_text(failed: FailedTransactionMetadata) -> str:
    """The runtime's reason for a failed transaction (``InstructionError(…)``, …)."""
    err = failed.err()
    if isinstance(err, TransactionErrorFieldless):
        return str(err).rsplit(".", 1)[-1]
    return str(err).removeprefix("TransactionError")


def already_processed(failed: FailedTransactionMetadata) -> bool:
    """The runtime refused a resend because the same signature already landed."""
    return failed.err() == TransactionErrorFieldless.AlreadyProcessed


def transfer_checked_ix(
    *,
    source: Pubkey,
    mint: Pubkey,
    destination: Pubkey,
    owner: Pubkey,
    amount: int,
    decimals: int,
    references: list[Pubkey] | None = None,
) -> Instruction:
    """An SPL ``transfer_checked``; Solana Pay references ride as extra read-only keys."""
    ix = spl.transfer_checked(
        TransferCheckedParams(
            program_id=TOKEN_PROGRAM_ID,
            source=source,
            mint=mint,
            dest=destination,
            owner=owner,
            amount=amount,
            decimals=decimals,
        )
    )
    extra = [AccountMeta(r, is_signer=False, is_writable=False) for r in references or []]
    return Instruction(ix.program_id, ix.data, [*ix.accounts, *extra])


class LiteSVMChainClient(ChainClient):
    def __init__(self, svm: LiteSVM | None = None) -> None:
        self.svm = svm or LiteSVM()
        self._messages: dict[str, Message] = {}
        self._errors: dict[str, str | None] = {}
        self._by_address: dict[str, list[str]] = {}
        self._blockhash = self.svm.latest_blockhash()
        self._height = 1

    # --- submitting ----------------------------------------------------------------------
    def submit(self, tx: Transaction) -> SendResult:
        """Execute a signed transaction and remember it when it landed.

        ``error`` is set when it failed: refused before landing (``BlockhashNotFound``, …)
        or landed and failed (fee paid, nothing else moved). A resend of a transaction that
        already landed is no failure: the runtime answers ``AlreadyProcessed`` and the first
        outcome stands.
        """
        result = self.svm.send_transaction(tx)
        sig = str(tx.signatures[0])
        error: str | None = None
        if isinstance(result, FailedTransactionMetadata):
            if already_processed(result) or sig in self._messages:
                return SendResult(sig)
            error = error_text(result)
        if self.svm.get_transaction(tx.signatures[0]) is not None:
            self._messages[sig] = tx.message
            self._errors[sig] = error
            for key in tx.message.account_keys:
                self._by_address.setdefault(str(key), []).insert(0, sig)
        return SendResult(sig, error)

    def sign_and_submit(self, payer: Keypair, ixs: list[Instruction], *signers: Keypair) -> str:
        tx = Transaction(
            [payer, *signers], Message(ixs, payer.pubkey()), self.svm.latest_blockhash()
        )
        result = self.submit(tx)
        if result.error is not None:
            raise RuntimeError(f"transaction failed: {result.error}")
        return result.signature

    # --- blocks --------------------------------------------------------------------------
    def _current_height(self) -> int:
        latest = self.svm.latest_blockhash()
        if latest != self._blockhash:
            self._blockhash, self._height = latest, self._height + 1
        return self._height

    def expire_blockhash(self) -> None:
        """Move the chain on: every blockhash handed out so far is past its last valid height."""
        self.svm.expire_blockhash()
        self._current_height()

    # --- set-up helpers (tests, local runs) ----------------------------------------------
    def fund(self, owner: Pubkey, lamports: int = 10_000_000_000) -> None:
        self.svm.airdrop(owner, lamports)

    def create_mint(self, authority: Keypair, decimals: int = 6) -> Pubkey:
        mint = Keypair()
        rent = self.svm.minimum_balance_for_rent_exemption(MINT_LEN)
        self.sign_and_submit(
            authority,
            [
                create_account(
                    CreateAccountParams(
                        from_pubkey=authority.pubkey(),
                        to_pubkey=mint.pubkey(),
                        lamports=rent,
                        space=MINT_LEN,
                        owner=TOKEN_PROGRAM_ID,
                    )
                ),
                spl.initialize_mint(
                    InitializeMintParams(
                        decimals=decimals,
                        program_id=TOKEN_PROGRAM_ID,
                        mint=mint.pubkey(),
                        mint_authority=authority.pubkey(),
                        freeze_authority=None,
                    )
                ),
            ],
            mint,
        )
        return mint.pubkey()

    def create_token_account(self, payer: Keypair, owner: Pubkey, mint: Pubkey) -> Pubkey:
        """The owner's associated token account for ``mint`` (created by ``payer``)."""
        self.sign_and_submit(
            payer, [spl.create_associated_token_account(payer.pubkey(), owner, mint)]
        )
        return spl.get_associated_token_address(owner, mint)

    def mint_to(self, authority: Keypair, mint: Pubkey, destination: Pubkey, amount: int) -> None:
        self.sign_and_submit(
            authority,
            [
                spl.mint_to(
                    MintToParams(
                        program_id=TOKEN_PROGRAM_ID,
                        mint=mint,
                        dest=destination,
                        mint_authority=authority.pubkey(),
                        amount=amount,
                    )
                )
            ],
        )

    # --- ChainClient -----------------------------------------------------------------------
    async def signatures_for_address(self, address: str, *, limit: int = 100) -> list[str]:
        return list(self._by_address.get(address, [])[:limit])

    def _mint_of(self, token_account: str) -> str | None:
        acc = self.svm.get_account(Pubkey.from_string(token_account))
        if acc is None or len(acc.data) < 165:
            return None
        return str(Pubkey(ACCOUNT_LAYOUT.parse(bytes(acc.data)).mint))

    async def get_transaction(self, signature: str) -> ChainTransaction | None:
        message = self._messages.get(signature)
        if message is None:
            return None
        error = self._errors.get(signature)
        keys = [str(k) for k in message.account_keys]
        raw = [
            RawInstruction(
                keys[ix.program_id_index], [keys[i] for i in bytes(ix.accounts)], bytes(ix.data)
            )
            for ix in message.instructions
        ]
        return ChainTransaction(
            signature=signature,
            succeeded=error is None,
            confirmation="finalized",
            transfers=parse_token_transfers(raw, self._mint_of) if error is None else [],
            error=error,
        )

    async def prepare_transfer(
        self,
        *,
        owner: Keypair,
        source: str,
        destination: str,
        mint: str,
        amount: int,
        decimals: int,
    ) -> SignedTransfer:
        ix = transfer_checked_ix(
            source=Pubkey.from_string(source),
            mint=Pubkey.from_string(mint),
            destination=Pubkey.from_string(destination),
            owner=owner.pubkey(),
            amount=amount,
            decimals=decimals,
        )
        height = self._current_height()
        blockhash = self.svm.latest_blockhash()
        tx = Transaction([owner], Message([ix], owner.pubkey()), blockhash)
        return SignedTransfer(str(tx.signatures[0]), str(blockhash), height, bytes(tx))

    async def _transmit(self, signed: SignedTransfer) -> SendResult:
        return self.submit(Transaction.from_bytes(signed.wire))

    async def confirmation(self, signature: str) -> tuple[str | None, str | None]:
        if signature not in self._messages:
            return None, None
        return "finalized", self._errors.get(signature)

    async def block_height(self) -> int:
        return self._current_height()

    async def token_balance(self, token_account: str) -> int:
        acc = self.svm.get_account(Pubkey.from_string(token_account))
        if acc is None or len(acc.data) < 165:
            return 0
        return int(ACCOUNT_LAYOUT.parse(bytes(acc.data)).amount)
