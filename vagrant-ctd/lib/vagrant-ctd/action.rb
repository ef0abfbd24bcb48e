# frozen_string_literal: true

require "vagrant/action/builder"
require_relative "action/steps"
require_relative "action/boot"

module VagrantPlugins
  module Ctd
    # The action chains Vagrant runs for each command (up, halt, destroy, ...).
    module Action
      include Vagrant::Action::Builtin
      Steps = Action::Steps

      def self.action_up
        Vagrant::Action::Builder.new.tap do |b|
          b.use ConfigValidate
          b.use Steps::Connect
          b.use Call, Steps::IsCreated do |env, b2|
            unless env[:result]
              b2.use Steps::CheckBox
              b2.use HandleBox
              b2.use Steps::ImportBox
              b2.use Steps::PrepareNetwork
            end
          end
          b.use action_start
        end
      end

      # Start a created (or to-be-created) instance: provisioning, synced folders, forwards, ssh.
      def self.action_start
        Vagrant::Action::Builder.new.tap do |b|
          b.use Call, Steps::State do |env, b2|
            case env[:result]
            when :running
              b2.use Message, I18n.t("vagrant.commands.common.vm_already_running")
              next
            when :suspended
              b2.use Steps::Resume
              next
            end
            b2.use Provision
            b2.use SyncedFolderCleanup
            b2.use SyncedFolders
            b2.use Steps::Create
            b2.use Steps::ForwardPorts
            b2.use Steps::Start
            b2.use Steps::WaitForSsh
          end
        end
      end

      def self.action_halt
        by_state do |state, b|
          case state
          when :not_created
            b.use Message, I18n.t("vagrant.commands.common.vm_not_created")
          when :stopped
            b.use Message, "The instance is stopped already."
          else
            b.use Steps::Stop
          end
        end
      end

      def self.action_reload
        created_only do |b|
          b.use action_halt
          b.use action_start
        end
      end

      def self.action_destroy
        by_state(Steps::IsCreated) do |created, b|
          unless created
            b.use Message, I18n.t("vagrant.commands.common.vm_not_created")
            next
          end
          b.use Call, DestroyConfirm do |env2, b3|
            next unless env2[:result]
            b3.use ProvisionerCleanup, :before
            b3.use Steps::Destroy
            b3.use SyncedFolderCleanup
          end
        end
      end

      def self.action_provision
        running_only do |b|
          b.use Provision
        end
      end

      def self.action_ssh
        running_only { |b| b.use SSHExec }
      end

      def self.action_ssh_run
        running_only { |b| b.use SSHRun }
      end

      def self.action_suspend
        running_only { |b| b.use Steps::Suspend }
      end

      def self.action_resume
        by_state do |state, b|
          if state == :suspended
            b.use Steps::Resume
          else
            b.use Message, "The instance is not suspended (#{state})."
          end
        end
      end

      def self.action_snapshot_save
        created_only { |b| b.use Steps::SnapshotSave }
      end

      def self.action_snapshot_restore
        created_only do |b|
          b.use Steps::SnapshotRestore
          b.use Call, IsEnvSet, :snapshot_delete do |env, b2|
            b2.use Steps::SnapshotDelete if env[:result]
          end
        end
      end

      def self.action_snapshot_delete
        created_only { |b| b.use Steps::SnapshotDelete }
      end

      def self.action_package
        created_only do |b|
          b.use Steps::Stop
          b.use Vagrant::Action::General::PackageSetupFolders
          b.use Vagrant::Action::General::PackageSetupFiles
          b.use Vagrant::Action::General::Package
          b.use Steps::PackageRootfs
        end
      end

      # validated config, a client, then the block with the machine's state (or whether it
      # exists: Steps::IsCreated) and the builder to add to
      def self.by_state(check = Steps::State, &block)
        Vagrant::Action::Builder.new.tap do |b|
          b.use ConfigValidate
          b.use Steps::Connect
          b.use Call, check do |env, b2|
            block.call(env[:result], b2)
          end
        end
      end

      def self.created_only
        by_state(Steps::IsCreated) do |created, b|
          if created
            yield b
          else
            b.use Message, I18n.t("vagrant.commands.common.vm_not_created")
          end
        end
      end

      def self.running_only
        by_state do |state, b|
          raise Vagrant::Errors::VMNotCreatedError if state == :not_created
          raise Vagrant::Errors::VMNotRunningError unless state == :running
          yield b
        end
      end
    end
  end
end
